//! HTML: the text of the page as a reader sees it. Only html5ever's tokenizer runs (no
//! tree is built): character data is kept, and the contents of `script`, `style` and
//! similar raw-text elements are dropped. Entities are decoded by the tokenizer.
//!
//! Words break where a browser breaks them: at block elements (`p`, `div`, `td`, `li`,
//! `br`, ...) but not at inline ones, so `un<b>believ</b>able` and the Rust docs'
//! `Range<wbr>Inclusive<wbr>Iter` stay one word each. Any element not known to be inline
//! breaks, since gluing two words is worse than splitting one.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// Elements whose content is not text for a reader.
const HIDDEN: &[&str] = &[
    "script", "style", "noscript", "template", "iframe", "noembed", "noframes", "xmp",
];

/// Elements that do not interrupt the flow of text (HTML's phrasing content that holds
/// text, and the old presentational tags).
const INLINE: &[&str] = &[
    "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn", "em", "font", "i",
    "ins", "kbd", "mark", "nobr", "q", "rb", "rp", "rt", "ruby", "s", "samp", "small", "span",
    "strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr",
];

struct TextSink {
    out: RefCell<String>,
    /// Inside an element of [`HIDDEN`]: its raw content is skipped up to the end tag.
    hidden: RefCell<Option<String>>,
}

impl TokenSink for TextSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::CharacterTokens(text) if self.hidden.borrow().is_none() => {
                self.out.borrow_mut().push_str(&text);
            }
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                let mut hidden = self.hidden.borrow_mut();
                match tag.kind {
                    TagKind::StartTag
                        if hidden.is_none() && HIDDEN.contains(&name) && !tag.self_closing =>
                    {
                        *hidden = Some(name.to_string());
                        // The tokenizer alone does not know these hold raw text; tell it,
                        // or `if (a<b)` inside a script would read as a tag.
                        let kind = if name == "script" {
                            RawKind::ScriptData
                        } else {
                            RawKind::Rawtext
                        };
                        return TokenSinkResult::RawData(kind);
                    }
                    TagKind::StartTag if name == "title" || name == "textarea" => {
                        self.out.borrow_mut().push(' ');
                        return TokenSinkResult::RawData(RawKind::Rcdata);
                    }
                    TagKind::EndTag if hidden.as_deref() == Some(name) => *hidden = None,
                    _ => {}
                }
                // Block elements separate words (`<td>a</td><td>b</td>`); inline ones not.
                if !INLINE.contains(&name) {
                    let mut out = self.out.borrow_mut();
                    if !out.ends_with(char::is_whitespace) && !out.is_empty() {
                        out.push(' ');
                    }
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

pub fn to_text(source: &str) -> String {
    let sink = TextSink {
        out: RefCell::new(String::with_capacity(source.len() / 2)),
        hidden: RefCell::new(None),
    };
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(source));
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.out.take()
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_only() {
        let text = super::to_text(
            "<html><head><title>T&amp;C</title><style>p{color:red}</style>\
             <script>if (a<b) { x = '</p>'; }</script></head>\
             <body><p>Hello&nbsp;<b>world</b></p><td>a</td><td>b</td></body></html>",
        );
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words, ["T&C", "Hello", "world", "a", "b"]);
    }

    #[test]
    fn inline_elements_keep_words_whole_and_blocks_split_them() {
        let text = super::to_text(
            "<p>Range<wbr>Inclusive<wbr>Iter is un<b>believ</b>able, <a href=x>link</a>ed              and <SPAN>x</SPAN><em>y</em></p><p>next</p><div>block</div>line<br>break             <ul><li>one</li><li>two</li></ul>",
        );
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "RangeInclusiveIter",
                "is",
                "unbelievable,",
                "linked",
                "and",
                "xy",
                "next",
                "block",
                "line",
                "break",
                "one",
                "two"
            ]
        );
    }
}
