//! The few HTML primitives the pages are written with. Every string that came from an event,
//! a ref name or the request goes through [`escape`]; a URL from an event becomes a link only
//! through [`http_link`].

use std::fmt::Write;

use crate::http::route::STYLESHEET_PATH;

/// Text safe in element content and in double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `url` as it may appear in an `href`: only an `http://` or `https://` URL without
/// whitespace or control characters (browsers strip those, which could turn
/// `" javascript:..."` into a script link). Anything else is shown as text, never linked.
pub fn is_http_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && !rest.is_empty()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A link to `url` if it is an http(s) URL, else the URL as code.
pub fn http_link(url: &str) -> String {
    if is_http_url(url) {
        link(url, &escape(url))
    } else {
        format!("<code>{}</code>", escape(url))
    }
}

/// `<a href="url">inner</a>`; `url` is escaped here, `inner` must already be markup.
pub fn link(url: &str, inner: &str) -> String {
    format!("<a href=\"{}\">{inner}</a>", escape(url))
}

/// A whole page: `title` is text (escaped here), `body` is markup. No script, no inline
/// style: the one stylesheet is `/graspd.css` (the Content-Security-Policy allows nothing
/// else).
pub fn page(title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 512);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"{STYLESHEET_PATH}\"></head>\n\
         <body><header><a class=\"brand\" href=\"/\">graspd</a>\
         <span class=\"tagline\">git over nostr</span></header>\n<main>\n{body}</main>\n\
         <footer>graspd, a GRASP server: git repositories authorised by signed nostr \
         events.</footer>\n</body></html>\n",
        escape(title)
    );
    out
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        let hostile = r#"<script>alert("x")</script> ' & "#;
        let escaped = escape(hostile);
        assert_eq!(
            escaped,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &#39; &amp; "
        );
        assert!(!escaped.contains(['<', '>', '"', '\'']));
        assert_eq!(escape("plain text ü"), "plain text ü");
    }

    #[test]
    fn only_http_urls_become_links() {
        for url in [
            "https://example.com/x?a=1&b=2",
            "http://h",
            "HTTPS://EXAMPLE.COM",
        ] {
            assert!(http_link(url).starts_with("<a href=\""), "{url}");
        }
        assert_eq!(
            http_link("https://example.com/x?a=1&b=\"2\""),
            "<a href=\"https://example.com/x?a=1&amp;b=&quot;2&quot;\">\
             https://example.com/x?a=1&amp;b=&quot;2&quot;</a>"
        );
        for url in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "\tjavascript:alert(1)",
            "java\nscript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:x",
            "//evil.example/",
            "https://",
            "https://a b",
            "https://ok\u{0}",
            "ftp://example.com",
            "",
        ] {
            let out = http_link(url);
            assert!(!out.contains("<a"), "{url:?} became a link: {out}");
            assert!(!out.contains("<script"), "{out}");
        }
    }

    #[test]
    fn page_escapes_its_title() {
        let out = page("<b>x</b>", "<p>body</p>");
        assert!(out.contains("<title>&lt;b&gt;x&lt;/b&gt;</title>"));
        assert!(!out.contains("<script"));
        assert!(!out.contains("style="));
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("äöü", 2), "äö…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
