//! The text of one page: its content stream (and the forms it draws) interpreted just
//! enough to know which string is shown where, in which font.
//!
//! Word and line breaks come from positions, as a reader sees them: a string that starts
//! a line lower begins a new line, one that starts more than a sixth of an em after the
//! previous one ended begins a new word, and so does a large negative kerning inside a
//! `TJ` array (how pdfTeX and others set spaces). Everything else about drawing (colour,
//! paths, images, clipping) is ignored.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use lopdf::content::Content;
use lopdf::{Dictionary, Document, Object, ObjectId};

use super::fonts::Font;

/// Nested forms deeper than this are not entered (a form may draw itself).
const MAX_FORM_DEPTH: usize = 8;
/// A gap of this many ems between two strings on a line separates words.
const WORD_GAP_EM: f64 = 0.15;

type Matrix = [f64; 6];
const IDENTITY: Matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

fn translate(m: &Matrix, tx: f64, ty: f64) -> Matrix {
    [
        m[0],
        m[1],
        m[2],
        m[3],
        tx * m[0] + ty * m[2] + m[4],
        tx * m[1] + ty * m[3] + m[5],
    ]
}

fn number(object: &Object) -> f64 {
    match *object {
        Object::Integer(i) => i as f64,
        Object::Real(r) => r as f64,
        _ => 0.0,
    }
}

/// What a document's pages share: its fonts, each read once.
pub struct Extractor<'a> {
    doc: &'a Document,
    /// By the address of the font dictionary inside the document.
    fonts: HashMap<usize, Rc<Font>>,
}

#[derive(Clone)]
struct TextState {
    font: Option<Rc<Font>>,
    font_name: Vec<u8>,
    size: f64,
    char_spacing: f64,
    word_spacing: f64,
    scale: f64,
    leading: f64,
}

struct Page<'p> {
    out: &'p mut String,
    problems: &'p mut Vec<String>,
    state: TextState,
    saved: Vec<TextState>,
    tm: Matrix,
    tlm: Matrix,
    /// Where the last string ended, and the em size it was set in.
    last_end: Option<(f64, f64, f64)>,
}

impl<'a> Extractor<'a> {
    pub fn new(doc: &'a Document) -> Extractor<'a> {
        Extractor {
            doc,
            fonts: HashMap::new(),
        }
    }

    /// Appends the text of page `page_id` to `out`; what could not be read on it (a
    /// font) goes to `problems`. An error means the page as a whole could not be read.
    pub fn page(
        &mut self,
        page_id: ObjectId,
        out: &mut String,
        problems: &mut Vec<String>,
    ) -> Result<(), String> {
        let doc = self.doc;
        let content = page_content(doc, page_id)?;
        let fonts = doc.get_page_fonts(page_id).unwrap_or_default();
        let (own, inherited) = doc
            .get_page_resources(page_id)
            .unwrap_or((None, Vec::new()));
        let mut resources: Vec<&Dictionary> = own.into_iter().collect();
        resources.extend(
            inherited
                .iter()
                .filter_map(|id| doc.get_dictionary(*id).ok()),
        );
        let mut page = Page {
            out,
            problems,
            state: TextState {
                font: None,
                font_name: Vec::new(),
                size: 0.0,
                char_spacing: 0.0,
                word_spacing: 0.0,
                scale: 1.0,
                leading: 0.0,
            },
            saved: Vec::new(),
            tm: IDENTITY,
            tlm: IDENTITY,
            last_end: None,
        };
        self.run(&mut page, &content, &fonts, &resources, 0)?;
        if !page.out.ends_with('\n') && !page.out.is_empty() {
            page.out.push('\n');
        }
        Ok(())
    }

    fn font(&mut self, dict: &Dictionary) -> Rc<Font> {
        let key = dict as *const Dictionary as usize;
        self.fonts
            .entry(key)
            .or_insert_with(|| Rc::new(Font::load(self.doc, dict)))
            .clone()
    }

    fn run(
        &mut self,
        page: &mut Page<'_>,
        content: &[u8],
        fonts: &BTreeMap<Vec<u8>, &'a Dictionary>,
        resources: &[&'a Dictionary],
        depth: usize,
    ) -> Result<(), String> {
        let content = Content::decode(content).map_err(|e| format!("content stream: {e}"))?;
        for op in &content.operations {
            let args = &op.operands;
            let n = |i: usize| args.get(i).map_or(0.0, number);
            match op.operator.as_str() {
                "BT" => {
                    page.tm = IDENTITY;
                    page.tlm = IDENTITY;
                }
                "q" => page.saved.push(page.state.clone()),
                "Q" => {
                    if let Some(state) = page.saved.pop() {
                        page.state = state;
                    }
                }
                "Tf" => {
                    let name = args.first().and_then(|o| o.as_name().ok()).unwrap_or(b"");
                    page.state.size = n(1);
                    page.state.font_name = name.to_vec();
                    page.state.font = fonts.get(name).map(|dict| self.font(dict));
                    let problem = match &page.state.font {
                        None => Some("not found"),
                        Some(font) => font.problem.as_deref(),
                    };
                    if let Some(problem) = problem {
                        let problem = format!("font {}: {problem}", String::from_utf8_lossy(name));
                        if !page.problems.contains(&problem) {
                            page.problems.push(problem);
                        }
                    }
                }
                "Tc" => page.state.char_spacing = n(0),
                "Tw" => page.state.word_spacing = n(0),
                "Tz" => page.state.scale = n(0) / 100.0,
                "TL" => page.state.leading = n(0),
                "Td" => page.next_line(n(0), n(1)),
                "TD" => {
                    page.state.leading = -n(1);
                    page.next_line(n(0), n(1));
                }
                "Tm" => {
                    page.tm = [n(0), n(1), n(2), n(3), n(4), n(5)];
                    page.tlm = page.tm;
                }
                "T*" => page.next_line(0.0, -page.state.leading),
                "Tj" => page.show_operands(args),
                "TJ" => page.show_operands(args),
                "'" => {
                    page.next_line(0.0, -page.state.leading);
                    page.show_operands(args);
                }
                "\"" => {
                    page.state.word_spacing = n(0);
                    page.state.char_spacing = n(1);
                    page.next_line(0.0, -page.state.leading);
                    page.show_operands(&args[args.len().min(2)..]);
                }
                "Do" if depth < MAX_FORM_DEPTH => {
                    let Some(name) = args.first().and_then(|o| o.as_name().ok()) else {
                        continue;
                    };
                    self.form(page, name, fonts, resources, depth)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Draws the form XObject `name`, if that is what it is, with its own fonts.
    fn form(
        &mut self,
        page: &mut Page<'_>,
        name: &[u8],
        fonts: &BTreeMap<Vec<u8>, &'a Dictionary>,
        resources: &[&'a Dictionary],
        depth: usize,
    ) -> Result<(), String> {
        let doc = self.doc;
        let deref = |o: &'a Object| doc.dereference(o).map_or(o, |(_, o)| o);
        let Some(stream) = resources
            .iter()
            .filter_map(|r| r.get(b"XObject").ok().map(deref)?.as_dict().ok())
            .find_map(|x| x.get(name).ok().map(deref)?.as_stream().ok())
        else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form".as_slice()) {
            return Ok(());
        }
        let content = stream
            .decompressed_content()
            .unwrap_or_else(|_| stream.content.clone());
        let own = stream
            .dict
            .get(b"Resources")
            .ok()
            .map(deref)
            .and_then(|r| r.as_dict().ok());
        let mut form_fonts = fonts.clone();
        if let Some(Ok(dict)) = own
            .and_then(|r| r.get(b"Font").ok())
            .map(|f| deref(f).as_dict())
        {
            for (key, value) in dict.iter() {
                if let Ok(font) = deref(value).as_dict() {
                    form_fonts.insert(key.clone(), font);
                }
            }
        }
        let mut form_resources: Vec<&Dictionary> = own.into_iter().collect();
        form_resources.extend_from_slice(resources);
        let saved = (page.tm, page.tlm);
        let result = self.run(page, &content, &form_fonts, &form_resources, depth + 1);
        (page.tm, page.tlm) = saved;
        result
    }
}

/// The page's content streams, joined. Unlike lopdf's `get_page_content`, a stream that
/// is missing or does not decompress is an error, not bytes to misread.
fn page_content(doc: &Document, page_id: ObjectId) -> Result<Vec<u8>, String> {
    let mut content = Vec::new();
    for id in doc.get_page_contents(page_id) {
        let stream = doc
            .get_object(id)
            .and_then(Object::as_stream)
            .map_err(|e| format!("content stream {} missing: {e}", id.0))?;
        if stream.dict.has(b"Filter") {
            let data = stream
                .decompressed_content()
                .map_err(|e| format!("content stream {} unreadable: {e}", id.0))?;
            content.extend_from_slice(&data);
        } else {
            content.extend_from_slice(&stream.content);
        }
        content.push(b'\n');
    }
    Ok(content)
}

impl Page<'_> {
    fn next_line(&mut self, tx: f64, ty: f64) {
        self.tlm = translate(&self.tlm, tx, ty);
        self.tm = self.tlm;
    }

    fn em(&self) -> f64 {
        let scale = (self.tm[0] * self.tm[0] + self.tm[1] * self.tm[1]).sqrt();
        let em = self.state.size.abs() * if scale > 0.0 { scale } else { 1.0 };
        if em > 0.0 {
            em
        } else {
            1.0
        }
    }

    fn separate(&mut self, with: char) {
        if !self.out.is_empty() && !self.out.ends_with(char::is_whitespace) {
            self.out.push(with);
        }
    }

    /// A string is about to be shown where the text matrix stands.
    fn place(&mut self) {
        let (x, y, em) = (self.tm[4], self.tm[5], self.em());
        if let Some((last_x, last_y, last_em)) = self.last_end {
            let em = em.max(last_em);
            if (y - last_y).abs() > em * 0.5 {
                self.separate('\n');
            } else if x - last_x > em * WORD_GAP_EM || x < last_x - em {
                self.separate(' ');
            }
        }
    }

    fn show_operands(&mut self, operands: &[Object]) {
        let Some(font) = self.state.font.clone() else {
            return;
        };
        let mut placed = false;
        for operand in operands {
            match operand {
                Object::String(bytes, _) => {
                    if !placed {
                        self.place();
                        placed = true;
                    }
                    self.show(&font, bytes);
                }
                Object::Array(items) => {
                    for item in items {
                        match item {
                            Object::String(bytes, _) => {
                                if !placed {
                                    self.place();
                                    placed = true;
                                }
                                self.show(&font, bytes);
                            }
                            other => {
                                let shift = -number(other) / 1000.0;
                                if shift > WORD_GAP_EM {
                                    self.separate(' ');
                                }
                                let tx = shift * self.state.size * self.state.scale;
                                self.tm = translate(&self.tm, tx, 0.0);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if placed {
            self.last_end = Some((self.tm[4], self.tm[5], self.em()));
        }
    }

    fn show(&mut self, font: &Font, bytes: &[u8]) {
        let s = &self.state;
        let (size, tc, tw, th) = (s.size, s.char_spacing, s.word_spacing, s.scale);
        let mut advance = 0.0;
        let out = &mut *self.out;
        font.show(bytes, |text, width, is_space| {
            out.push_str(text);
            advance += (width * size + tc + if is_space { tw } else { 0.0 }) * th;
        });
        self.tm = translate(&self.tm, advance, 0.0);
    }
}
