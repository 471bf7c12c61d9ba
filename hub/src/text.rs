//! Text for people, with no knowledge of the fleet: durations and times
//! relative to a `now` the caller passes in, and aligned tables (comfy-table,
//! no borders). Pure; used by the CLI, the rollout views and the dashboard.

use comfy_table::{CellAlignment, Table};

/// A duration in the largest whole unit: `45 s`, `3 min`, `5 h`, `2 d`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// `t` relative to `now`: `just now`, `45 s ago`, `3 min ago`, … A time in
/// the future (clock skew) reads as now, never as a wrap-around.
pub fn ago(t: u64, now: u64) -> String {
    match now.saturating_sub(t) {
        0 => "just now".into(),
        s => format!("{} ago", duration(s)),
    }
}

/// Like [`ago`], `never` for `None`.
pub fn ago_or_never(t: Option<u64>, now: u64) -> String {
    t.map_or_else(|| "never".into(), |t| ago(t, now))
}

/// Rows under a header as aligned columns, two spaces apart, no borders;
/// `right[i]`: right-align column `i` (numbers).
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r.clone());
    }
    let last = header.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { 2 }));
        if right.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines, keys aligned.
pub fn fields(rows: &[(&str, String)]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v.clone()]);
    }
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == 0 { 1 } else { 0 }));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        let cases = [
            (0, "just now"),
            (5, "5 s ago"),
            (119, "119 s ago"),
            (180, "3 min ago"),
            (7199, "119 min ago"),
            (7200, "2 h ago"),
            (200_000, "2 d ago"),
        ];
        for (secs, want) in cases {
            assert_eq!(ago(1_000_000 - secs, 1_000_000), want, "{secs}");
        }
        assert_eq!(ago(10, 5), "just now");
        assert_eq!(ago_or_never(None, 5), "never");
    }

    #[test]
    fn tables_align_columns_without_borders() {
        let rows = vec![
            vec!["long-name".to_string(), "12".into(), "x".into()],
            vec!["b".to_string(), "3".into(), "longer text".into()],
        ];
        assert_eq!(
            table(&["A", "N", "TEXT"], &rows, &[1]),
            "A           N  TEXT\nlong-name  12  x\nb           3  longer text\n"
        );
    }
}
