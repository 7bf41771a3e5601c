//! Rendering of values, contexts and tables for human and JSON output.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

/// Returns the value as text: unchanged when it is valid UTF-8, otherwise
/// with every byte outside printable ASCII written as `\xNN` (and `\\`,
/// `\"`, `\'`, `\n`, `\t`, `\r` escaped).
pub fn display_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => value.escape_ascii().to_string(),
    }
}

/// JSON fields describing a list of values: `values` as text (escaped when
/// not UTF-8) and `values_base64` with the exact bytes.
pub fn values_json(values: &[Vec<u8>]) -> (Value, Value) {
    let text: Vec<String> = values.iter().map(|v| display_value(v)).collect();
    let base64: Vec<String> = values.iter().map(|v| STANDARD.encode(v)).collect();
    (json!(text), json!(base64))
}

/// Prints rows as left-aligned columns separated by two spaces.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    render(header.to_vec());
    for row in rows {
        render(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_value_keeps_utf8() {
        assert_eq!(display_value("héllo\tx".as_bytes()), "héllo\tx");
    }

    #[test]
    fn display_value_escapes_invalid_utf8() {
        assert_eq!(display_value(&[b'a', 0xff, b'\n']), "a\\xff\\n");
    }

    #[test]
    fn values_json_has_exact_bytes() {
        let (text, base64) = values_json(&[vec![0xff], b"ok".to_vec()]);
        assert_eq!(text, json!(["\\xff", "ok"]));
        assert_eq!(base64, json!(["/w==", "b2s="]));
    }
}
