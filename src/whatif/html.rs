//! The what-if report as one self-contained HTML page: inline CSS and inline SVG charts,
//! no script and nothing fetched, so it opens from a file with no network. Every text
//! taken from the data (store, category, campaign and user ids) is escaped.

use std::fmt::Write as _;

use super::report::{Bar, Line, Report, Totals, UserChange};

/// The page.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 << 10);
    h.push_str(HEAD);
    let range = match (&r.range.from, &r.range.to) {
        (None, None) => "every retained receipt".to_owned(),
        (Some(f), None) => format!("receipts from {f}"),
        (None, Some(t)) => format!("receipts before {t}"),
        (Some(f), Some(t)) => format!("receipts from {f} to before {t}"),
    };
    let _ = write!(
        h,
        "<header><h1>What if: the proposed rules against the live ones</h1>\
         <p>Compared: {} ({} records; {} earlier records folded under the live rules on \
         both sides). Folded at {} records/s.</p></header><main>",
        esc(&range),
        r.range.records,
        r.range.history_records,
        r.range.records_per_s
    );
    totals_table(&mut h, &r.totals.live, &r.totals.proposed);
    users_section(&mut h, r);
    lines_section(
        &mut h,
        "By store category",
        "Category",
        &r.categories,
        "categories",
    );
    lines_section(
        &mut h,
        "Campaigns: coins held at the end (their cost)",
        "Campaign",
        &r.campaigns,
        "campaigns",
    );
    lines_section(&mut h, "By store", "Store", &r.stores, "stores");
    levels_table(&mut h, r);
    h.push_str("</main></body></html>\n");
    h
}

const HEAD: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>mallquest what-if report</title><style>\
body{font-family:system-ui,sans-serif;margin:2rem;color:#111;background:#fff;max-width:72rem}\
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem}\
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #999;padding:.25rem .6rem;text-align:right}\
th:first-child,td:first-child{text-align:left}thead th{background:#eee}\
.up{color:#075e07}.down{color:#a00}\
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#333}\
.legend span{display:inline-block;width:.9rem;height:.9rem;margin:0 .3rem 0 1rem;vertical-align:middle}\
</style></head><body>";

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn signed(n: i64) -> String {
    let class = match n.signum() {
        1 => " class=\"up\"",
        -1 => " class=\"down\"",
        _ => "",
    };
    format!("<td{class} data-change=\"{n}\">{n:+}</td>")
}

fn totals_table(h: &mut String, live: &Totals, proposed: &Totals) {
    h.push_str(
        "<section aria-labelledby=\"totals\"><h2 id=\"totals\">Totals</h2>\
         <table id=\"totals-table\"><thead><tr><th scope=\"col\">Figure</th>\
         <th scope=\"col\">Live</th><th scope=\"col\">Proposed</th>\
         <th scope=\"col\">Change</th></tr></thead><tbody>",
    );
    let rows: [(&str, &str, i64, i64); 10] = [
        (
            "coins_issued",
            "Coins issued",
            as_i64(live.coins_issued),
            as_i64(proposed.coins_issued),
        ),
        (
            "coins_reversed",
            "Coins taken back by refunds",
            as_i64(live.coins_reversed),
            as_i64(proposed.coins_reversed),
        ),
        (
            "coins_redeemed",
            "Coins redeemed",
            as_i64(live.coins_redeemed),
            as_i64(proposed.coins_redeemed),
        ),
        (
            "coins_outstanding",
            "Coins outstanding (liability)",
            live.coins_outstanding,
            proposed.coins_outstanding,
        ),
        ("xp", "XP held", live.xp, proposed.xp),
        (
            "missions_completed",
            "Missions completed",
            as_i64(live.missions_completed),
            as_i64(proposed.missions_completed),
        ),
        (
            "badges_earned",
            "Badges earned",
            as_i64(live.badges_earned),
            as_i64(proposed.badges_earned),
        ),
        (
            "receipts_applied",
            "Receipts applied",
            as_i64(live.receipts_applied),
            as_i64(proposed.receipts_applied),
        ),
        (
            "rejected",
            "Records rejected",
            as_i64(live.rejected),
            as_i64(proposed.rejected),
        ),
        ("users", "Users", as_i64(live.users), as_i64(proposed.users)),
    ];
    for (key, label, l, p) in rows {
        let _ = write!(
            h,
            "<tr data-key=\"{key}\"><th scope=\"row\">{label}</th><td data-live=\"{l}\">{l}</td>\
             <td data-proposed=\"{p}\">{p}</td>{}</tr>",
            signed(p.saturating_sub(l))
        );
    }
    h.push_str("</tbody></table></section>");
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn users_section(h: &mut String, r: &Report) {
    let u = &r.users;
    let d = &u.coin_delta;
    let _ = write!(
        h,
        "<section aria-labelledby=\"users\"><h2 id=\"users\">Users</h2>\
         <p>{} users; {} would go up a level or more, {} down; {} would hold other coins.</p>\
         <table><thead><tr><th scope=\"col\">Change of coins per user</th><th scope=\"col\">min</th>\
         <th scope=\"col\">p1</th><th scope=\"col\">p5</th><th scope=\"col\">p25</th>\
         <th scope=\"col\">p50</th><th scope=\"col\">p75</th><th scope=\"col\">p95</th>\
         <th scope=\"col\">p99</th><th scope=\"col\">max</th></tr></thead><tbody><tr>\
         <th scope=\"row\">coins</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></tbody></table>",
        u.count, u.level_up, u.level_down, u.coins_changed, d.min, d.p1, d.p5, d.p25, d.p50,
        d.p75, d.p95, d.p99, d.max
    );
    histogram_svg(h, &u.histogram);
    top_table(h, "Top gainers", "gainers", &u.top_gainers);
    top_table(h, "Top losers", "losers", &u.top_losers);
    h.push_str("</section>");
}

fn histogram_svg(h: &mut String, bars: &[Bar]) {
    if bars.is_empty() {
        return;
    }
    let (w, ht, pad) = (720.0, 220.0, 30.0);
    let most = bars.iter().map(|b| b.users).max().unwrap_or(1).max(1) as f64;
    let bw = (w - 2.0 * pad) / bars.len() as f64;
    let _ = write!(
        h,
        "<figure><svg role=\"img\" aria-labelledby=\"hist-title\" width=\"{w}\" height=\"{}\" \
         viewBox=\"0 0 {w} {}\"><title id=\"hist-title\">Users by change of coins</title>",
        ht + 40.0,
        ht + 40.0
    );
    for (i, b) in bars.iter().enumerate() {
        let bh = (ht - pad) * b.users as f64 / most;
        let x = pad + i as f64 * bw;
        let _ = write!(
            h,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#1f4e99\">\
             <title>{} to {}: {} users</title></rect>",
            ht - bh,
            (bw - 2.0).max(1.0),
            b.from,
            b.to,
            b.users
        );
    }
    let (first, last) = (bars[0].from, bars[bars.len() - 1].to);
    let _ = write!(
        h,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"13\">{first}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"end\">{last}</text></svg>\
         <figcaption>Users by change of coins (proposed minus live), {} bars.</figcaption></figure>",
        ht + 20.0,
        w - pad,
        ht + 20.0,
        bars.len()
    );
}

fn top_table(h: &mut String, title: &str, id: &str, rows: &[UserChange]) {
    let _ = write!(
        h,
        "<h3>{title}</h3><table id=\"{id}\"><thead><tr><th scope=\"col\">User</th>\
         <th scope=\"col\">Coins, live</th><th scope=\"col\">Coins, proposed</th>\
         <th scope=\"col\">Change</th><th scope=\"col\">Level, live</th>\
         <th scope=\"col\">Level, proposed</th></tr></thead><tbody>"
    );
    for u in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td></tr>",
            esc(&u.user_id),
            u.live_coins,
            u.proposed_coins,
            signed(u.change),
            u.live_level,
            u.proposed_level
        );
    }
    if rows.is_empty() {
        h.push_str("<tr><td colspan=\"6\">none</td></tr>");
    }
    h.push_str("</tbody></table>");
}

fn lines_section(h: &mut String, title: &str, what: &str, lines: &[Line], id: &str) {
    let _ = write!(
        h,
        "<section aria-labelledby=\"{id}\"><h2 id=\"{id}\">{title}</h2>"
    );
    if lines.len() <= 24 {
        pair_svg(h, title, id, lines);
    }
    let _ = write!(
        h,
        "<table id=\"{id}-table\"><thead><tr><th scope=\"col\">{what}</th>\
         <th scope=\"col\">Coins, live</th><th scope=\"col\">Coins, proposed</th>\
         <th scope=\"col\">Change</th></tr></thead><tbody>"
    );
    for l in lines {
        let name = match (&l.category, l.id.is_empty()) {
            (_, true) => "(none)".to_owned(),
            (Some(c), false) => format!("{} ({})", esc(&l.id), esc(c)),
            (None, false) => esc(&l.id),
        };
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td>{}</tr>",
            l.live,
            l.proposed,
            signed(l.change)
        );
    }
    if lines.is_empty() {
        h.push_str("<tr><td colspan=\"4\">none</td></tr>");
    }
    h.push_str("</tbody></table></section>");
}

/// Horizontal bars, live and proposed side by side for each line.
fn pair_svg(h: &mut String, title: &str, id: &str, lines: &[Line]) {
    if lines.is_empty() {
        return;
    }
    let most = lines
        .iter()
        .flat_map(|l| [l.live.unsigned_abs(), l.proposed.unsigned_abs()])
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (label_w, bar_w, row) = (200.0, 480.0, 34.0);
    let height = row * lines.len() as f64 + 10.0;
    let _ = write!(
        h,
        "<figure><p class=\"legend\"><span style=\"background:#1f4e99\"></span>live\
         <span style=\"background:#c2410c\"></span>proposed</p>\
         <svg role=\"img\" aria-labelledby=\"{id}-chart\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\"><title id=\"{id}-chart\">{}</title>",
        label_w + bar_w + 90.0,
        label_w + bar_w + 90.0,
        esc(title)
    );
    for (i, l) in lines.iter().enumerate() {
        let y = i as f64 * row + 5.0;
        let name = if l.id.is_empty() { "(none)" } else { &l.id };
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + 18.0,
            esc(name)
        );
        for (j, (v, color)) in [(l.live, "#1f4e99"), (l.proposed, "#c2410c")]
            .into_iter()
            .enumerate()
        {
            let len = bar_w * v.unsigned_abs() as f64 / most;
            let _ = write!(
                h,
                "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"{len:.1}\" height=\"13\" fill=\"{color}\">\
                 <title>{v}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{v}</text>",
                y + j as f64 * 14.0,
                label_w + len + 4.0,
                y + j as f64 * 14.0 + 11.0
            );
        }
    }
    h.push_str(&format!(
        "</svg><figcaption>{}</figcaption></figure>",
        esc(title)
    ));
}

fn levels_table(h: &mut String, r: &Report) {
    h.push_str(
        "<section aria-labelledby=\"levels\"><h2 id=\"levels\">Users by level at the end</h2>\
         <table id=\"levels-table\"><thead><tr><th scope=\"col\">Level</th>\
         <th scope=\"col\">Live</th><th scope=\"col\">Proposed</th><th scope=\"col\">Change</th>\
         </tr></thead><tbody>",
    );
    let levels: std::collections::BTreeSet<u32> = r
        .levels
        .live
        .keys()
        .chain(r.levels.proposed.keys())
        .copied()
        .collect();
    for level in levels {
        let l = as_i64(r.levels.live.get(&level).copied().unwrap_or(0));
        let p = as_i64(r.levels.proposed.get(&level).copied().unwrap_or(0));
        let _ = write!(
            h,
            "<tr><td>{level}</td><td>{l}</td><td>{p}</td>{}</tr>",
            signed(p - l)
        );
    }
    h.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn everything_that_could_open_markup_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
