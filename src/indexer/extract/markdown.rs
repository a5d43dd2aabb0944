//! Markdown: the text a reader sees, without the markup (`#`, `*`, link targets), so
//! that search snippets read as prose.

use pulldown_cmark::{Event, Parser, TagEnd};

pub fn to_text(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for event in Parser::new(source) {
        match event {
            Event::Text(text)
            | Event::Code(text)
            | Event::InlineMath(text)
            | Event::DisplayMath(text) => out.push_str(&text),
            Event::SoftBreak => out.push(' '),
            Event::HardBreak | Event::Rule => out.push('\n'),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::TableCell
                | TagEnd::TableRow
                | TagEnd::BlockQuote(_),
            ) => out.push('\n'),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_is_dropped() {
        let text = super::to_text(
            "# Title\n\nSome *emphasis* and [a link](http://x.invalid).\n\n```\ncode\n```\n",
        );
        assert_eq!(text, "Title\nSome emphasis and a link.\ncode\n\n");
    }
}
