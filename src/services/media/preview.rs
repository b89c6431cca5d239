//! URL previews: OpenGraph metadata of a web page (`/preview_url`).
//!
//! The page is fetched through [`crate::outbound::Outbound`] (which refuses private,
//! loopback and link-local addresses unless `outbound.allowed_ip_ranges` allows them), at
//! most `media.url_preview.max_bytes` of it is read, and only HTML is parsed.

use serde_json::{Map, Value};

/// The OpenGraph properties of an HTML page (`og:*` `<meta property=… content=…>`), with
/// `og:title` and `og:description` falling back to `<title>` and `<meta name=description>`.
/// `og:image` is resolved against `base` and returned separately (the service stores the
/// image and answers with its `mxc://` URI); relative URLs elsewhere are left as they are.
pub fn parse_opengraph(html: &str, base: &url::Url) -> (Map<String, Value>, Option<url::Url>) {
    let mut og = Map::new();
    let mut image = None;
    let Ok(dom) = tl::parse(html, tl::ParserOptions::default()) else {
        return (og, image);
    };
    let parser = dom.parser();
    let mut description = None;
    let mut title = None;
    for node in dom.nodes() {
        let Some(tag) = node.as_tag() else { continue };
        let name = tag.name().as_utf8_str().to_ascii_lowercase();
        if name == "title" && title.is_none() {
            let text = tag.inner_text(parser).trim().to_owned();
            if !text.is_empty() {
                title = Some(decode_entities(&text));
            }
            continue;
        }
        if name != "meta" {
            continue;
        }
        let attrs = tag.attributes();
        let get =
            |k: &'static str| attrs.get(k).flatten().map(|v| v.as_utf8_str().trim().to_owned());
        let Some(content) = get("content") else { continue };
        let content = decode_entities(&content);
        let key = get("property").or_else(|| get("name")).map(|k| k.to_ascii_lowercase());
        match key.as_deref() {
            Some("og:image") | Some("og:image:url") | Some("og:image:secure_url")
                if image.is_none() =>
            {
                image = base.join(&content).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
            }
            Some("description") if description.is_none() => description = Some(content),
            Some(k) if k.starts_with("og:") && k.len() <= 64 && content.len() <= 4096 => {
                og.entry(k.to_owned()).or_insert(Value::String(content));
            }
            _ => {}
        }
        if og.len() >= 64 {
            break;
        }
    }
    if !og.contains_key("og:title")
        && let Some(t) = title
    {
        og.insert("og:title".into(), Value::String(t));
    }
    if !og.contains_key("og:description")
        && let Some(d) = description
    {
        og.insert("og:description".into(), Value::String(d));
    }
    // Numeric image dimensions are numbers in the spec's example.
    for k in ["og:image:width", "og:image:height"] {
        if let Some(n) = og.get(k).and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok()) {
            og.insert(k.into(), Value::from(n));
        }
    }
    (og, image)
}

/// The few entities pages use in titles; the rest stays as written.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_properties_are_read() {
        let html = r#"<html><head><title>Fallback</title>
            <meta property="og:title" content="The &amp; Title">
            <meta property="og:description" content="Words">
            <meta property="og:image" content="/img.png">
            <meta property="og:image:width" content="640">
            </head><body>x</body></html>"#;
        let base = url::Url::parse("https://example.org/page").unwrap();
        let (og, image) = parse_opengraph(html, &base);
        assert_eq!(og["og:title"], "The & Title");
        assert_eq!(og["og:description"], "Words");
        assert_eq!(og["og:image:width"], 640);
        assert_eq!(image.unwrap().as_str(), "https://example.org/img.png");
    }

    #[test]
    fn title_and_description_fall_back_to_plain_html() {
        let html = r#"<html><head><title> Plain </title><meta name="description" content="D"></head></html>"#;
        let base = url::Url::parse("https://example.org/").unwrap();
        let (og, image) = parse_opengraph(html, &base);
        assert_eq!(og["og:title"], "Plain");
        assert_eq!(og["og:description"], "D");
        assert!(image.is_none());
    }
}
