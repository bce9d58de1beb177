//! Positional `?` placeholders.
//!
//! JDBC and ADBC (`paramstyle = "qmark"`) send `?` placeholders, but DataFusion turns every `?`
//! into the same placeholder, so `SELECT ? + ?` could not be bound by position.
//! [`number_placeholders`] rewrites each `?` outside string literals, quoted identifiers and
//! comments into `$1`, `$2`, … before planning; `$n` placeholders pass through unchanged, and
//! each `?` takes the lowest number no `$n` of the statement uses (`? AND $2` is `$1 AND $2`,
//! `$1, ?` is `$1, $2`), so the two styles never collide.

use std::collections::BTreeSet;

/// Rewrites `?` placeholders to `$n`, in order of appearance, skipping the numbers explicit
/// `$n` placeholders use.
pub(super) fn number_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let mut explicit = BTreeSet::new();
    rewrite(sql, &mut explicit, || 0);
    let mut next = 0;
    let mut unused = || {
        next += 1;
        while explicit.contains(&next) {
            next += 1;
        }
        next
    };
    rewrite(sql, &mut BTreeSet::new(), &mut unused)
}

/// `sql` with each `?` outside literals, quoted identifiers and comments replaced by
/// `$<number()>`; the numbers of explicit `$n` placeholders go into `explicit`.
fn rewrite(sql: &str, explicit: &mut BTreeSet<usize>, mut number: impl FnMut() -> usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // A quoted literal or identifier; a doubled quote is an escaped one.
                out.push(c);
                while let Some(q) = chars.next() {
                    out.push(q);
                    if q == c {
                        if chars.peek() == Some(&c) {
                            out.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for l in chars.by_ref() {
                    out.push(l);
                    if l == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut prev = '\0';
                for b in chars.by_ref() {
                    out.push(b);
                    if prev == '*' && b == '/' {
                        break;
                    }
                    prev = b;
                }
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push(c);
                let mut digits = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    digits.push(d);
                }
                out.push_str(&digits);
                if let Ok(n) = digits.parse() {
                    explicit.insert(n);
                }
            }
            '?' => {
                out.push('$');
                out.push_str(&number().to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::number_placeholders;

    #[test]
    fn numbers_only_real_placeholders() {
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
        assert_eq!(
            number_placeholders("SELECT ? + ? FROM t WHERE a = ?"),
            "SELECT $1 + $2 FROM t WHERE a = $3"
        );
        assert_eq!(
            number_placeholders("SELECT '?', 'it''s ?', \"q?\" -- ?\n, ? /* ? */ , ?"),
            "SELECT '?', 'it''s ?', \"q?\" -- ?\n, $1 /* ? */ , $2"
        );
        assert_eq!(number_placeholders("SELECT $1, $2"), "SELECT $1, $2");
        // Mixed styles: `?` takes the numbers `$n` leaves free.
        assert_eq!(number_placeholders("SELECT ? AND $2"), "SELECT $1 AND $2");
        assert_eq!(
            number_placeholders("SELECT $1, ?, $3, ?, '$2'"),
            "SELECT $1, $2, $3, $4, '$2'"
        );
    }
}
