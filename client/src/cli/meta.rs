//! psql-style meta commands of `quiver sql` (`\d`, `\x`, `\timing`, `\g FILE`, ...).
//!
//! [`parse`] turns a meta command's text into a [`Meta`] or a message for the user; an unknown
//! command is an error, never SQL sent to the server.

use std::path::PathBuf;

use super::output::Format;

/// A meta command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meta {
    /// `\q`: leave.
    Quit,
    /// `\?`: the list of meta commands.
    Help,
    /// `\timing [on|off]`: show elapsed time after each result (no argument: toggle).
    Timing(Option<bool>),
    /// `\x [on|off]`: one line per column (no argument: toggle).
    Expanded(Option<bool>),
    /// `\format NAME`, `\pset format NAME`.
    Format(Format),
    /// `\g [FILE]`: run the statement being typed (or the last one), into FILE if given.
    Go(Option<PathBuf>),
    /// `\d`: the tables; `\d NAME`: a table's columns.
    Describe(Option<String>),
}

/// The text of `\?`.
pub(crate) const HELP: &str = "\
Meta commands:
  \\d               list tables
  \\d NAME          describe a table's columns
  \\x [on|off]      expanded output: one line per column (toggles without an argument)
  \\timing [on|off] show how long each statement took (toggles without an argument)
  \\format FORMAT   output format: table, csv or json (also \\pset format FORMAT)
  \\g [FILE]        run the statement typed so far (or the last one again); with FILE, write
                   the result to it: .parquet, .arrow (IPC file), .csv, .json or .jsonl
  \\?               this help
  \\q               quit (also Ctrl-D)
Statements end with ';'. Ctrl-C cancels a running statement, or clears the line.";

/// Parses a meta command (its text starts with `\`).
pub(crate) fn parse(text: &str) -> Result<Meta, String> {
    let body = text.strip_prefix('\\').unwrap_or(text);
    let (name, rest) = match body.find(char::is_whitespace) {
        Some(at) => (&body[..at], body[at..].trim()),
        None => (body, ""),
    };
    let args: Vec<&str> = rest.split_whitespace().collect();
    let none = |meta: Meta| {
        if args.is_empty() {
            Ok(meta)
        } else {
            Err(format!("\\{name} takes no argument"))
        }
    };
    match name {
        "q" | "quit" => none(Meta::Quit),
        "?" | "h" | "help" => none(Meta::Help),
        "timing" => Ok(Meta::Timing(switch(name, &args)?)),
        "x" => Ok(Meta::Expanded(switch(name, &args)?)),
        "format" => match args.as_slice() {
            [format] => Ok(Meta::Format(format.parse()?)),
            _ => Err("\\format needs one of: table, csv, json".to_string()),
        },
        "pset" => match args.as_slice() {
            ["format", format] => Ok(Meta::Format(format.parse()?)),
            ["expanded" | "x", rest @ ..] => Ok(Meta::Expanded(switch("pset expanded", rest)?)),
            ["format"] => Err("\\pset format needs one of: table, csv, json".to_string()),
            [option, ..] => Err(format!(
                "\\pset: unknown option '{option}' (quiver sql knows format and expanded)"
            )),
            [] => Err("\\pset needs an option: format or expanded".to_string()),
        },
        "g" => Ok(Meta::Go(
            (!rest.is_empty()).then(|| PathBuf::from(unquote(rest))),
        )),
        "d" | "dt" => match args.as_slice() {
            [] => Ok(Meta::Describe(None)),
            [table] => Ok(Meta::Describe(Some(unquote(table).to_string()))),
            _ => Err(format!("\\{name} takes at most one table name")),
        },
        _ => Err(format!("invalid command \\{name}; try \\? for help")),
    }
}

/// `on`/`off` (or nothing: toggle).
fn switch(name: &str, args: &[&str]) -> Result<Option<bool>, String> {
    match args {
        [] => Ok(None),
        ["on" | "true" | "1"] => Ok(Some(true)),
        ["off" | "false" | "0"] => Ok(Some(false)),
        [other] => Err(format!("\\{name}: expected on or off, not '{other}'")),
        _ => Err(format!("\\{name} takes at most one argument: on or off")),
    }
}

/// A file or table name, without the single or double quotes around it.
fn unquote(text: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            return inner;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_meta_commands() {
        assert_eq!(parse("\\q"), Ok(Meta::Quit));
        assert_eq!(parse("\\?"), Ok(Meta::Help));
        assert_eq!(parse("\\timing"), Ok(Meta::Timing(None)));
        assert_eq!(parse("\\timing off"), Ok(Meta::Timing(Some(false))));
        assert_eq!(parse("\\x on"), Ok(Meta::Expanded(Some(true))));
        assert_eq!(parse("\\pset expanded"), Ok(Meta::Expanded(None)));
        assert_eq!(parse("\\format csv"), Ok(Meta::Format(Format::Csv)));
        assert_eq!(parse("\\pset format json"), Ok(Meta::Format(Format::Json)));
        assert_eq!(parse("\\g"), Ok(Meta::Go(None)));
        assert_eq!(
            parse("\\g 'my result.parquet'"),
            Ok(Meta::Go(Some(PathBuf::from("my result.parquet"))))
        );
        assert_eq!(parse("\\d"), Ok(Meta::Describe(None)));
        assert_eq!(parse("\\dt"), Ok(Meta::Describe(None)));
        assert_eq!(
            parse("\\d \"Lineitem\""),
            Ok(Meta::Describe(Some("Lineitem".into())))
        );
    }

    #[test]
    fn bad_meta_commands_are_errors() {
        assert!(
            parse("\\nope")
                .unwrap_err()
                .contains("invalid command \\nope")
        );
        assert!(parse("\\").unwrap_err().contains("invalid command"));
        assert!(parse("\\q now").is_err());
        assert!(parse("\\timing maybe").unwrap_err().contains("on or off"));
        assert!(parse("\\format xml").unwrap_err().contains("xml"));
        assert!(parse("\\format").is_err());
        assert!(parse("\\pset border 2").unwrap_err().contains("border"));
        assert!(parse("\\d a b").is_err());
    }
}
