//! What a user types, cut into SQL statements and meta commands.
//!
//! A `;` outside quotes (`'…'`, `"…"`) and comments (`-- …`, `/* … */`) ends a statement. A
//! backslash outside quotes and comments starts a meta command (psql): it runs to the end of its
//! line and does not end the statement being typed, so `SELECT 1 \g out.csv` is the statement
//! `SELECT 1` followed by the meta command `\g out.csv`, which runs it. Line comments are
//! dropped from statements (their newline is kept); block comments stay. The lexer's state
//! carries across lines, so a quoted string may span several.

/// One thing to run, in the order typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A complete statement, trimmed, without its `;`.
    Sql(String),
    /// A meta command's text, backslash included, trimmed.
    Meta(String),
    /// `\g [FILE]` and the statement typed before it, if any.
    Go(String, Option<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Normal,
    Quoted(char),
    LineComment,
    BlockComment,
}

/// The statement being typed and where the lexer stands in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputBuffer {
    pending: String,
    state: State,
    /// Whether a backslash starts a meta command (not in [`split_statements`]).
    meta: bool,
}

impl InputBuffer {
    /// A buffer that recognises meta commands.
    pub(crate) fn new() -> Self {
        Self {
            meta: true,
            ..Self::default()
        }
    }

    /// Feeds `text` (one line or several); returns the statements it completes and the meta
    /// commands it holds, in order. An unfinished statement stays pending.
    pub(crate) fn push(&mut self, text: &str) -> Vec<Item> {
        let mut items = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match self.state {
                State::Quoted(q) => {
                    self.pending.push(c);
                    if c == q {
                        self.state = State::Normal;
                    }
                }
                State::LineComment => {
                    if c == '\n' {
                        self.pending.push('\n');
                        self.state = State::Normal;
                    }
                }
                State::BlockComment => {
                    self.pending.push(c);
                    if c == '*' && chars.peek() == Some(&'/') {
                        self.pending.push('/');
                        chars.next();
                        self.state = State::Normal;
                    }
                }
                State::Normal => match c {
                    '\'' | '"' => {
                        self.state = State::Quoted(c);
                        self.pending.push(c);
                    }
                    '-' if chars.peek() == Some(&'-') => {
                        chars.next();
                        self.state = State::LineComment;
                    }
                    '/' if chars.peek() == Some(&'*') => {
                        chars.next();
                        self.pending.push_str("/*");
                        self.state = State::BlockComment;
                    }
                    ';' => {
                        if let Some(sql) = self.take() {
                            items.push(Item::Sql(sql));
                        }
                    }
                    '\\' if self.meta => {
                        let mut command = String::from('\\');
                        for c in chars.by_ref() {
                            if c == '\n' {
                                break;
                            }
                            command.push(c);
                        }
                        let command = command.trim().to_string();
                        // `\g` runs the statement typed so far: it goes with the command, so
                        // that later lines start a new one.
                        if command == "\\g" || command.starts_with("\\g ") {
                            items.push(Item::Go(command, self.take()));
                        } else {
                            items.push(Item::Meta(command));
                        }
                    }
                    _ => self.pending.push(c),
                },
            }
        }
        items
    }

    /// The pending statement, trimmed (`None` if blank); the buffer is empty afterwards.
    pub(crate) fn take(&mut self) -> Option<String> {
        let sql = self.pending.trim().to_string();
        self.clear();
        (!sql.is_empty()).then_some(sql)
    }

    /// Whether no statement is being typed.
    pub(crate) fn is_blank(&self) -> bool {
        self.pending.trim().is_empty() && matches!(self.state, State::Normal | State::LineComment)
    }

    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.state = State::Normal;
    }
}

/// Whether `input`, typed after what `carried` holds, is ready to run: it is blank, or it ends
/// with its statements complete, or it holds a meta command (which runs at once). Otherwise the
/// line editor keeps reading lines into the same entry.
pub(crate) fn is_complete(carried: &InputBuffer, input: &str) -> bool {
    if input.trim().is_empty() {
        return true;
    }
    let mut buffer = carried.clone();
    let items = buffer.push(input);
    buffer.is_blank()
        || items
            .iter()
            .any(|i| matches!(i, Item::Meta(_) | Item::Go(..)))
}

/// Splits a script at `;` outside quotes and comments; drops empty statements and line
/// comments. Backslashes are plain characters here.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut buffer = InputBuffer::default();
    let mut statements: Vec<String> = buffer
        .push(text)
        .into_iter()
        .filter_map(|item| match item {
            Item::Sql(sql) => Some(sql),
            Item::Meta(_) | Item::Go(..) => None,
        })
        .collect();
    statements.extend(buffer.take());
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> Item {
        Item::Sql(s.to_string())
    }

    fn meta(s: &str) -> Item {
        Item::Meta(s.to_string())
    }

    #[test]
    fn splits_outside_quotes_and_comments() {
        let s = split_statements("select 1; -- a; comment\nselect ';' ; ;select \"a;b\" from t");
        assert_eq!(s, vec!["select 1", "select ';'", "select \"a;b\" from t"]);
        assert!(split_statements("  ;; ").is_empty());
        let s = split_statements("select /* ; */ 1; select 'it''s;'");
        assert_eq!(s, vec!["select /* ; */ 1", "select 'it''s;'"]);
        assert_eq!(split_statements("select '\\d'"), vec!["select '\\d'"]);
    }

    #[test]
    fn statements_span_lines_until_a_semicolon() {
        let mut b = InputBuffer::new();
        assert!(b.push("select\n").is_empty());
        assert!(!b.is_blank());
        assert!(b.push("  'a;\n").is_empty());
        assert_eq!(
            b.push("b' ; select 2;\n"),
            vec![sql("select\n  'a;\nb'"), sql("select 2")]
        );
        assert!(b.is_blank());
    }

    #[test]
    fn meta_commands_run_to_the_end_of_their_line() {
        let mut b = InputBuffer::new();
        assert_eq!(b.push("\\d lineitem\n"), vec![meta("\\d lineitem")]);
        assert!(b.is_blank());
        // `\g` after a statement on its line: the statement stays pending for it.
        assert_eq!(
            b.push("select 1 \\g out.csv\nselect 2;"),
            vec![
                Item::Go("\\g out.csv".into(), Some("select 1".into())),
                sql("select 2")
            ]
        );
        let mut b = InputBuffer::new();
        assert_eq!(
            b.push("select 1; \\x\n"),
            vec![sql("select 1"), meta("\\x")]
        );
        // A backslash in a string or comment is no meta command.
        let mut b = InputBuffer::new();
        assert_eq!(b.push("select '\\d' -- \\q\n;"), vec![sql("select '\\d'")]);
    }

    #[test]
    fn completeness_for_the_line_editor() {
        let empty = InputBuffer::new();
        assert!(is_complete(&empty, ""));
        assert!(is_complete(&empty, "select 1;"));
        assert!(is_complete(&empty, "select 1; -- done"));
        assert!(!is_complete(&empty, "select 1"));
        assert!(!is_complete(&empty, "select ';"));
        assert!(!is_complete(&empty, "select 1; select 2"));
        assert!(is_complete(&empty, "\\d"));
        assert!(is_complete(&empty, "select 1 \\g"));
        let mut carried = InputBuffer::new();
        carried.push("select 1\n\\x\n");
        assert!(!is_complete(&carried, "from t"));
        assert!(is_complete(&carried, "from t;"));
    }
}
