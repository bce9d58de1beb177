//! Positional `?` placeholders.
//!
//! JDBC and ADBC (`paramstyle = "qmark"`) send `?` placeholders, but DataFusion turns every `?`
//! into the same placeholder, so `SELECT ? + ?` could not be bound by position.
//! [`number_placeholders`] rewrites each `?` outside string literals, quoted identifiers and
//! comments into `$1`, `$2`, … before planning; `$n` placeholders pass through unchanged.

/// Rewrites `?` placeholders to `$1..$n`, in order of appearance.
pub(super) fn number_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1;
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
            '?' => {
                out.push('$');
                out.push_str(&next.to_string());
                next += 1;
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
    }
}
