//! The full-text index on disk (`<data-dir>/index`), built on tantivy.
//!
//! One document per file: its absolute path, its name and body text for search, and its
//! size, modification time and content hash as fast fields, so that a re-index can tell
//! unchanged files without reading the stored bodies. Every ancestor folder of the path
//! is indexed as a term too, which makes "all documents under this folder" one term
//! query: that is how a re-index finds the documents it replaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::columnar::{Column, StrColumn};
use tantivy::directory::MmapDirectory;
use tantivy::query::{QueryParser, TermQuery};
use tantivy::schema::{
    Document, Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
    Value, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer};
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, SegmentReader, TantivyDocument, Term,
};

use super::tokenizer::WordTokenizer;

/// The analyzer of the searchable text: words (and character pairs in Chinese, Japanese
/// and Korean, see [`super::tokenizer`]), lowercased, accents folded (so `cafe` finds
/// `café`), with absurdly long tokens (base64 blobs, minified code) dropped.
const ANALYZER: &str = "words";
/// Characters of context a search hit shows around its matches.
const SNIPPET_CHARS: usize = 200;
/// Indexing memory per tantivy writer thread; more only delays the first segment flush.
const WRITER_MEMORY_PER_THREAD: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index at {dir}: {source}")]
    Open {
        dir: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error(transparent)]
    Tantivy(#[from] tantivy::TantivyError),
}

/// What a re-index compares to decide that a file is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    pub hash: u64,
}

/// One file's document, as the job hands it over.
pub struct NewDocument<'a> {
    pub path: &'a str,
    pub name: &'a str,
    pub body: &'a str,
    pub stamp: FileStamp,
}

#[derive(Clone, Copy)]
struct Fields {
    path: Field,
    folder: Field,
    name: Field,
    body: Field,
    size: Field,
    mtime: Field,
    hash: Field,
}

/// An open index. Cheap to share; searches may run while a job writes.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

/// What `GET /api/search` answers.
#[derive(Debug, Serialize)]
pub struct SearchResults {
    pub query: String,
    /// Matching documents in the whole index, not only those returned.
    pub total_hits: usize,
    pub hits: Vec<Hit>,
}

#[derive(Debug, Serialize)]
pub struct Hit {
    pub path: String,
    pub score: f32,
    /// HTML: the text is escaped and the matched words are wrapped in `<b>`.
    pub snippet: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query does not parse; the message is the parser's.
    #[error("{0}")]
    BadQuery(#[from] tantivy::query::QueryParserError),
    /// The query parses but asks for what this index cannot answer (`name:*` needs a
    /// fast field, say); the message is tantivy's.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Index(#[from] tantivy::TantivyError),
}

impl SearchError {
    /// Errors of running a parsed query: those about the query itself are the client's.
    fn running(error: tantivy::TantivyError) -> SearchError {
        match error {
            tantivy::TantivyError::SchemaError(message)
            | tantivy::TantivyError::InvalidArgument(message) => SearchError::Unsupported(message),
            other => SearchError::Index(other),
        }
    }
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let words = TextOptions::default().set_stored().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        path: builder.add_text_field("path", (STRING | STORED).set_fast("raw")),
        folder: builder.add_text_field("folder", STRING),
        name: builder.add_text_field("name", words.clone()),
        body: builder.add_text_field("body", words),
        size: builder.add_u64_field("size", NumericOptions::default().set_fast().set_stored()),
        mtime: builder.add_i64_field("mtime", NumericOptions::default().set_fast()),
        hash: builder.add_u64_field("hash", NumericOptions::default().set_fast()),
    };
    (builder.build(), fields)
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it (and `dir`) when there is none yet.
    pub fn open_or_create(dir: &Path) -> Result<SearchIndex, IndexError> {
        let open = || -> tantivy::Result<Index> {
            std::fs::create_dir_all(dir)?;
            let (schema, _) = schema();
            Index::open_or_create(MmapDirectory::open(dir)?, schema)
        };
        let index = open().map_err(|source| IndexError::Open {
            dir: dir.to_path_buf(),
            source,
        })?;
        Self::wrap(index, dir)
    }

    fn wrap(index: Index, dir: &Path) -> Result<SearchIndex, IndexError> {
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(IndexError::Open {
                dir: dir.to_path_buf(),
                source: tantivy::TantivyError::SchemaError(
                    "the index was built by another version; remove the folder to rebuild it"
                        .to_string(),
                ),
            });
        }
        index.tokenizers().register(
            ANALYZER,
            TextAnalyzer::builder(WordTokenizer::default())
                .filter(RemoveLongFilter::limit(40))
                .filter(LowerCaser)
                .filter(AsciiFoldingFilter)
                .build(),
        );
        // Commits of this process reload the reader at once (see `reload`); the delayed
        // reload picks up commits of another process, such as `progress-hub index`.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()?;
        Ok(SearchIndex {
            index,
            reader,
            fields,
        })
    }

    /// A writer with `threads` indexing threads. Only one can exist per index: it holds
    /// the index's lock file until dropped.
    pub(super) fn writer<D: Document>(&self, threads: usize) -> Result<IndexWriter<D>, IndexError> {
        let threads = threads.max(1);
        Ok(self
            .index
            .writer_with_num_threads(threads, threads * WRITER_MEMORY_PER_THREAD)?)
    }

    /// Path → stamp of every document under `folder`, as of the last commit.
    pub fn stamps_under(&self, folder: &Path) -> Result<HashMap<String, FileStamp>, IndexError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.folder, &folder.to_string_lossy()),
            IndexRecordOption::Basic,
        );
        let mut addresses: Vec<_> = searcher
            .search(&query, &DocSetCollector)?
            .into_iter()
            .collect();
        addresses.sort_unstable();
        let mut stamps = HashMap::with_capacity(addresses.len());
        let mut path = String::new();
        for segment in addresses.chunk_by(|a, b| a.segment_ord == b.segment_ord) {
            let columns = StampColumns::open(searcher.segment_reader(segment[0].segment_ord))?;
            for address in segment {
                if let Some(stamp) = columns.read(address.doc_id, &mut path)? {
                    stamps.insert(path.clone(), stamp);
                }
            }
        }
        Ok(stamps)
    }

    /// The tantivy document of a file.
    pub(super) fn document(&self, doc: &NewDocument<'_>) -> TantivyDocument {
        let f = self.fields;
        let mut document = TantivyDocument::new();
        document.add_text(f.path, doc.path);
        for ancestor in Path::new(doc.path).ancestors().skip(1) {
            document.add_text(f.folder, ancestor.to_string_lossy());
        }
        document.add_text(f.name, doc.name);
        document.add_text(f.body, doc.body);
        document.add_u64(f.size, doc.stamp.size);
        document.add_i64(f.mtime, doc.stamp.mtime_ns);
        document.add_u64(f.hash, doc.stamp.hash);
        document
    }

    /// The term that names the document of `path` (for replacing or deleting it).
    pub(super) fn path_term(&self, path: &str) -> Term {
        Term::from_field_text(self.fields.path, path)
    }

    /// Makes the last commit visible to searches now.
    pub fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    /// Documents in the index, as of the last reload.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query in the query language of tantivy over file names and text; every
    /// word must match unless the query says `OR`.
    pub fn search(&self, query: &str, limit: usize) -> Result<SearchResults, SearchError> {
        let searcher = self.reader.searcher();
        let mut parser =
            QueryParser::for_index(&self.index, vec![self.fields.name, self.fields.body]);
        parser.set_conjunction_by_default();
        let parsed = parser.parse_query(query)?;
        let (total_hits, top) = searcher
            .search(
                &parsed,
                &(Count, TopDocs::with_limit(limit.max(1)).order_by_score()),
            )
            .map_err(SearchError::running)?;
        let mut snippets = SnippetGenerator::create(&searcher, &*parsed, self.fields.body)
            .map_err(SearchError::running)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let path = doc
                .get_first(self.fields.path)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            hits.push(Hit {
                path,
                score,
                snippet: snippets.snippet_from_doc(&doc).to_html(),
            });
        }
        Ok(SearchResults {
            query: query.to_string(),
            total_hits,
            hits,
        })
    }
}

/// The fast fields of one segment that make up a document's path and stamp.
struct StampColumns {
    paths: Option<StrColumn>,
    sizes: Column<u64>,
    mtimes: Column<i64>,
    hashes: Column<u64>,
}

impl StampColumns {
    fn open(segment: &SegmentReader) -> tantivy::Result<StampColumns> {
        let fast = segment.fast_fields();
        Ok(StampColumns {
            paths: fast.str("path")?,
            sizes: fast.u64("size")?,
            mtimes: fast.i64("mtime")?,
            hashes: fast.u64("hash")?,
        })
    }

    /// The stamp of `doc`, its path written into `path`.
    fn read(&self, doc: DocId, path: &mut String) -> tantivy::Result<Option<FileStamp>> {
        let Some(paths) = &self.paths else {
            return Ok(None);
        };
        let Some(ord) = paths.term_ords(doc).next() else {
            return Ok(None);
        };
        path.clear();
        if !paths.ord_to_str(ord, path)? {
            return Ok(None);
        }
        Ok(Some(FileStamp {
            size: self.sizes.first(doc).unwrap_or(0),
            mtime_ns: self.mtimes.first(doc).unwrap_or(0),
            hash: self.hashes.first(doc).unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexer::writer::WriteSession;

    fn stamp(n: u64) -> FileStamp {
        FileStamp {
            size: n,
            mtime_ns: n as i64,
            hash: n * 7,
        }
    }

    #[test]
    fn put_replace_search_and_stamps() {
        let tmp = tempfile::tempdir().unwrap();
        let index = SearchIndex::open_or_create(&tmp.path().join("index")).unwrap();
        let mut session = WriteSession::open(&index, 1).unwrap();
        for (path, body, n) in [
            ("/r/a/one.txt", "the quick brown fox", 1),
            ("/r/a/sub/two.txt", "a lazy café dog", 2),
            ("/r/b/three.txt", "the fox again", 3),
        ] {
            let name = path.rsplit('/').next().unwrap();
            let doc = NewDocument {
                path,
                name,
                body,
                stamp: stamp(n),
            };
            session.put(&doc).unwrap();
        }
        session.commit().unwrap();
        assert_eq!(session.pending(), 0);
        assert_eq!(index.num_docs(), 3);
        let under_a = index.stamps_under(Path::new("/r/a")).unwrap();
        assert_eq!(under_a.len(), 2);
        assert_eq!(under_a["/r/a/sub/two.txt"], stamp(2));

        let found = index.search("cafe", 10).unwrap();
        assert_eq!(found.total_hits, 1);
        assert_eq!(found.hits[0].path, "/r/a/sub/two.txt");
        assert!(
            found.hits[0].snippet.contains("<b>café</b>"),
            "{}",
            found.hits[0].snippet
        );
        assert_eq!(index.search("fox", 10).unwrap().total_hits, 2);

        // Replacing a document keeps one copy; deleting removes it.
        let doc = NewDocument {
            path: "/r/b/three.txt",
            name: "three.txt",
            body: "no animals",
            stamp: stamp(4),
        };
        session.put(&doc).unwrap();
        session.delete("/r/a/one.txt");
        session.commit().unwrap();
        assert_eq!(index.num_docs(), 2);
        assert_eq!(index.search("fox", 10).unwrap().total_hits, 0);
        assert!(matches!(
            index.search("body:(", 10),
            Err(SearchError::BadQuery(_))
        ));
        session.finish();
    }
}
