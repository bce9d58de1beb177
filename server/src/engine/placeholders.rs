//! Positional `?` placeholders.
//!
//! JDBC and ADBC (`paramstyle = "qmark"`) send `?` placeholders, but DataFusion turns every `?`
//! into the same placeholder, so `SELECT ? + ?` could not be bound by position.
//! [`number_placeholders`] rewrites each `?` outside string literals, quoted identifiers and
//! comments into `$1`, `$2`, … before planning; `$n` placeholders pass through unchanged. One
//! statement uses one style: mixing `?` with `$n` is `InvalidArgument` (the two numberings
//! would collide).

use crate::error::{QuiverError, Result};

/// Rewrites `?` placeholders to `$1..$n`, in order of appearance.
pub(super) fn number_placeholders(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let mut numbered = false;
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
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                numbered = true;
                out.push(c);
            }
            '?' => {
                out.push('$');
                out.push_str(&next.to_string());
                next += 1;
            }
            _ => out.push(c),
        }
    }
    if numbered && next > 1 {
        return Err(QuiverError::InvalidArgument(
            "use either ? or $1, $2, ... placeholders in one statement, not both".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::number_placeholders;

    #[test]
    fn mixed_styles_are_refused() {
        let err = number_placeholders("SELECT $1, ?").unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        // A `$1` inside a literal is text, not a placeholder.
        assert_eq!(
            number_placeholders("SELECT '$1', ?").unwrap(),
            "SELECT '$1', $1"
        );
    }

    #[test]
    fn numbers_only_real_placeholders() {
        assert_eq!(number_placeholders("SELECT 1").unwrap(), "SELECT 1");
        assert_eq!(
            number_placeholders("SELECT ? + ? FROM t WHERE a = ?").unwrap(),
            "SELECT $1 + $2 FROM t WHERE a = $3"
        );
        assert_eq!(
            number_placeholders("SELECT '?', 'it''s ?', \"q?\" -- ?\n, ? /* ? */ , ?").unwrap(),
            "SELECT '?', 'it''s ?', \"q?\" -- ?\n, $1 /* ? */ , $2"
        );
        assert_eq!(
            number_placeholders("SELECT $1, $2").unwrap(),
            "SELECT $1, $2"
        );
    }
}
