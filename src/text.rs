//! Text that came from strangers and is shown to people: names on the consent page, URIs and
//! names in the operator's terminal and logs.

use std::borrow::Cow;

/// Unicode format characters (general category Cf) and the invisible fillers used like them:
/// bidirectional overrides and isolates, zero-width characters, the BOM, interlinear and tag
/// characters. They change how a name looks without looking like anything.
fn is_format_or_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x2800 | 0x061C | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890..=0x0891
        | 0x08E2 | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xE0100..=0xE01EF)
}

/// Why a display name cannot be shown as it is, if it cannot.
pub fn check_display_name(name: &str) -> Result<(), &'static str> {
    if name.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    if name.chars().any(|c| c.is_whitespace() && c != ' ') {
        return Err(
            "contains white space other than plain spaces (line separators, wide or special spaces)",
        );
    }
    if name.chars().any(is_format_or_invisible) {
        return Err(
            "contains invisible formatting characters (such as bidirectional overrides or zero-width characters)",
        );
    }
    if name.trim().is_empty() {
        return Err("is blank");
    }
    Ok(())
}

/// Whether a URI or identifier holds anything but visible characters: control characters,
/// white space, or format characters. Such a value can forge lines in a log or a terminal.
pub fn has_invisible(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || is_format_or_invisible(c))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Script {
    Latin,
    /// Fullwidth forms, small capitals and IPA letters, letter-like symbols and the
    /// mathematical alphanumerics: Latin look-alikes that are not plain Latin.
    LatinLookalike,
    Greek,
    Coptic,
    Cyrillic,
    Armenian,
    Cherokee,
    Lisu,
    Other,
}

fn script_of(c: char) -> Option<Script> {
    if !c.is_alphabetic() {
        return None;
    }
    Some(match c as u32 {
        0x0041..=0x024F | 0x1E00..=0x1EFF | 0x2C60..=0x2C7F | 0xA720..=0xA7FF => Script::Latin,
        0x0250..=0x02AF
        | 0x1D00..=0x1DBF
        | 0x2100..=0x214F
        | 0xFF21..=0xFF5A
        | 0x1D400..=0x1D7FF => Script::LatinLookalike,
        0x03E2..=0x03EF | 0x2C80..=0x2CFF => Script::Coptic,
        0x0370..=0x03FF | 0x1F00..=0x1FFF => Script::Greek,
        0xA4D0..=0xA4FF => Script::Lisu,
        0x0400..=0x052F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Script::Cyrillic,
        0x0530..=0x058F => Script::Armenian,
        0x13A0..=0x13FF | 0xAB70..=0xABBF => Script::Cherokee,
        _ => Script::Other,
    })
}

/// Whether a name mixes alphabets that hold look-alikes of each other's letters (Latin,
/// Greek, Cyrillic, Armenian, Cherokee): "Сlaude" with a Cyrillic С looks like "Claude".
pub fn mixes_scripts(name: &str) -> bool {
    let mut first: Option<Script> = None;
    for s in name.chars().filter_map(script_of) {
        if s == Script::Other {
            continue;
        }
        match first {
            None => first = Some(s),
            Some(f) if f != s => return true,
            _ => {}
        }
    }
    false
}

/// A value made safe for one line of a terminal or a log: control, format and other
/// invisible characters are written as escapes.
pub fn printable(s: &str) -> Cow<'_, str> {
    let escaped =
        |c: char| c.is_control() || is_format_or_invisible(c) || (c.is_whitespace() && c != ' ');
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if escaped(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// An OAuth `error_description` within RFC 6749's character set (%x20-21 / %x23-5B /
/// %x5D-7E): anything else becomes `?`.
pub fn oauth_description(s: &str) -> Cow<'_, str> {
    let allowed =
        |c: char| matches!(c, '\u{20}'..='\u{21}' | '\u{23}'..='\u{5B}' | '\u{5D}'..='\u{7E}');
    if s.chars().all(allowed) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| if allowed(c) { c } else { '?' })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_lie_about_themselves() {
        assert!(check_display_name("Claude Code").is_ok());
        assert!(check_display_name("Ünïcödé 名前").is_ok());
        assert!(check_display_name("Claude \u{202e}edoC\u{200b}").is_err());
        assert!(check_display_name("Claude\u{2066}Code").is_err());
        assert!(check_display_name("a\nb").is_err());
        assert!(check_display_name("\u{3164}").is_err());
        assert!(mixes_scripts("\u{0421}laude"));
        assert!(mixes_scripts("Clαude"));
        assert!(!mixes_scripts("Claude Code 2"));
        assert!(mixes_scripts("\u{A4DA}laude"), "Lisu");
        assert!(mixes_scripts("\u{1D5A2}laude"), "mathematical sans-serif C");
        assert!(mixes_scripts("\u{FF23}laude"), "fullwidth C");
        assert!(check_display_name("Claude\u{2028}Code").is_err());
        assert!(check_display_name("Claude\u{2800}").is_err());
        assert!(check_display_name("Claude\u{3000}Code").is_err());
        assert!(!mixes_scripts("Клод"));
        assert!(!mixes_scripts("Claude 日本語"));
    }

    #[test]
    fn what_reaches_a_terminal_or_a_redirect() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(printable("a\rb\u{1b}[2J"), "a\\rb\\u{1b}[2J");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(oauth_description("bad \"x\"\n\\"), "bad ?x???");
        assert!(has_invisible("https://a.example/cb\n"));
        assert!(has_invisible("https://a.example/c b"));
        assert!(!has_invisible("https://a.example/cb"));
    }
}
