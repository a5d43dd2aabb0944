//! How text is cut into searchable words, for indexing and for queries alike.
//!
//! Scripts that separate words with spaces or punctuation (Latin, Cyrillic, Greek, ...)
//! are cut there, like tantivy's `SimpleTokenizer`: a word is a run of letters and digits.
//!
//! Chinese and Japanese are written without spaces, so a run of Han, Kana or Hangul has
//! no visible word boundaries. Such a run becomes its characters and its overlapping
//! character pairs (bigrams), as search engines commonly do without a dictionary: `自動採点`
//! is indexed as `自 自動 動 動採 採 採点 点`, each pair at the position of its first
//! character. A query goes through the same tokenizer, so `自動採点` becomes a phrase of
//! those same tokens and matches wherever the four characters stand together, inside any
//! sentence; a one-character query (`式`) matches the character. A line break between two
//! such characters does not end the run, since these lines break anywhere, also inside
//! words (hard-wrapped text files, PDF lines). Text in other scripts
//! gets exactly the tokens it had before, so their ranking does not change.

use std::str::CharIndices;

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Words, and characters plus bigrams for CJK runs (see the module documentation).
#[derive(Clone, Default)]
pub struct WordTokenizer {
    token: Token,
}

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = WordStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordStream<'a> {
        self.token.reset();
        WordStream {
            text,
            chars: text.char_indices(),
            token: &mut self.token,
            cjk: None,
        }
    }
}

pub struct WordStream<'a> {
    text: &'a str,
    /// The characters not looked at yet.
    chars: CharIndices<'a>,
    token: &'a mut Token,
    /// Inside a CJK run: the character whose tokens come next.
    cjk: Option<CjkChar>,
}

#[derive(Clone, Copy)]
struct CjkChar {
    start: usize,
    end: usize,
    /// Its one-character token went out; its pair with the next character comes next.
    single_sent: bool,
}

/// Han, Kana and Hangul letters: scripts written without spaces between words (Korean
/// uses spaces, but attaches particles to words, so pairs serve it too).
pub fn is_cjk(c: char) -> bool {
    if c.is_ascii() || !c.is_alphanumeric() {
        return false;
    }
    matches!(c as u32,
        0x1100..=0x11FF        // Hangul Jamo
        | 0x2E80..=0x2FDF      // CJK and Kangxi radicals
        | 0x3005..=0x3007      // 々 〆 〇
        | 0x3040..=0x30FF      // Hiragana, Katakana (with ー)
        | 0x3100..=0x31FF      // Bopomofo, Hangul compatibility Jamo, Katakana extensions
        | 0x3400..=0x4DBF      // CJK extension A
        | 0x4E00..=0x9FFF      // CJK unified ideographs
        | 0xA960..=0xA97F      // Hangul Jamo extended A
        | 0xAC00..=0xD7FF      // Hangul syllables, Jamo extended B
        | 0xF900..=0xFAFF      // CJK compatibility ideographs
        | 0xFF66..=0xFF9F      // half-width Katakana
        | 0x1B000..=0x1B16F    // Kana supplement and extensions
        | 0x20000..=0x3134F // CJK extensions B to G
    )
}

impl WordStream<'_> {
    fn emit(&mut self, from: usize, to: usize, new_position: bool) {
        self.token.text.clear();
        self.token.text.push_str(&self.text[from..to]);
        self.token.offset_from = from;
        self.token.offset_to = to;
        if new_position {
            self.token.position = self.token.position.wrapping_add(1);
        }
    }

    /// The next token of the CJK run in progress; `false` when the run is over.
    fn advance_cjk(&mut self) -> bool {
        let Some(current) = self.cjk else {
            return false;
        };
        if !current.single_sent {
            self.cjk = Some(CjkChar {
                single_sent: true,
                ..current
            });
            self.emit(current.start, current.end, true);
            return true;
        }
        // The pair with the next character, if that one is CJK too. A line break between
        // two CJK characters is no word break (lines of Chinese and Japanese break
        // anywhere, also inside words), as browsers treat it.
        let mut ahead = self.chars.clone();
        let mut next = ahead.next();
        if let Some((_, '\r')) = next {
            next = ahead.next();
        }
        let mut joined_lines = false;
        if let Some((_, '\n')) = next {
            next = ahead.next();
            joined_lines = true;
        }
        match next {
            Some((start, c)) if is_cjk(c) => {
                let end = start + c.len_utf8();
                self.chars = ahead;
                self.cjk = Some(CjkChar {
                    start,
                    end,
                    single_sent: false,
                });
                self.emit(current.start, end, false);
                if joined_lines {
                    // The pair's text is the two characters, without the break.
                    self.token.text.clear();
                    self.token
                        .text
                        .push_str(&self.text[current.start..current.end]);
                    self.token.text.push_str(&self.text[start..end]);
                }
                true
            }
            _ => {
                self.cjk = None;
                false
            }
        }
    }
}

impl TokenStream for WordStream<'_> {
    fn advance(&mut self) -> bool {
        if self.advance_cjk() {
            return true;
        }
        while let Some((start, c)) = self.chars.next() {
            if !c.is_alphanumeric() {
                continue;
            }
            if is_cjk(c) {
                self.cjk = Some(CjkChar {
                    start,
                    end: start + c.len_utf8(),
                    single_sent: false,
                });
                return self.advance_cjk();
            }
            // A word: up to the next character that is neither a letter nor a digit, or
            // that starts a CJK run.
            let mut end = self.text.len();
            let mut ahead = self.chars.clone();
            while let Some((i, c)) = ahead.next() {
                if !c.is_alphanumeric() || is_cjk(c) {
                    end = i;
                    break;
                }
                self.chars = ahead.clone();
            }
            self.emit(start, end, true);
            return true;
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::tokenizer::SimpleTokenizer;

    fn tokens(text: &str) -> Vec<(usize, String)> {
        let mut tokenizer = WordTokenizer::default();
        let mut stream = tokenizer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            let t = stream.token();
            let covered: String = text[t.offset_from..t.offset_to]
                .chars()
                .filter(|c| !matches!(c, '\r' | '\n'))
                .collect();
            assert_eq!(covered, t.text);
            out.push((t.position, t.text.clone()));
        }
        out
    }

    fn owned(expected: &[(usize, &str)]) -> Vec<(usize, String)> {
        expected.iter().map(|(p, s)| (*p, s.to_string())).collect()
    }

    #[test]
    fn cjk_runs_become_characters_and_pairs() {
        assert_eq!(
            tokens("自動採点"),
            owned(&[
                (0, "自"),
                (0, "自動"),
                (1, "動"),
                (1, "動採"),
                (2, "採"),
                (2, "採点"),
                (3, "点")
            ])
        );
        // Punctuation ends a run; Latin words and digits in between stay words.
        assert_eq!(
            tokens("式、Rust言語 v2で"),
            owned(&[
                (0, "式"),
                (1, "Rust"),
                (2, "言"),
                (2, "言語"),
                (3, "語"),
                (4, "v2"),
                (5, "で")
            ])
        );
        assert_eq!(
            tokens("マーク・シート"),
            owned(&[
                (0, "マ"),
                (0, "マー"),
                (1, "ー"),
                (1, "ーク"),
                (2, "ク"),
                (3, "シ"),
                (3, "シー"),
                (4, "ー"),
                (4, "ート"),
                (5, "ト")
            ])
        );
        // A line break inside a CJK run does not break it.
        assert_eq!(tokens("自動\n採点"), tokens("自動採点"));
        assert_eq!(tokens("自動\r\n採点"), tokens("自動採点"));
        assert_eq!(
            tokens("自動\n\n採点"),
            owned(&[
                (0, "自"),
                (0, "自動"),
                (1, "動"),
                (2, "採"),
                (2, "採点"),
                (3, "点")
            ])
        );
        assert_eq!(
            tokens("한국어"),
            owned(&[(0, "한"), (0, "한국"), (1, "국"), (1, "국어"), (2, "어")])
        );
    }

    #[test]
    fn other_scripts_get_the_tokens_of_the_simple_tokenizer() {
        for text in [
            "Hello, happy tax-payer! über café naïve 42x",
            "Привет, мир — καλημέρα κόσμε",
            "",
            "   ,,, ",
            "trailing word",
            "a\u{0301}b multi\u{00A0}space",
        ] {
            let mut simple = SimpleTokenizer::default();
            let mut stream = simple.token_stream(text);
            let mut expected = Vec::new();
            while stream.advance() {
                let t = stream.token();
                expected.push((t.position, t.text.clone()));
            }
            assert_eq!(tokens(text), expected, "{text:?}");
        }
    }
}
