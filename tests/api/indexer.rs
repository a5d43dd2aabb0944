//! The built-in indexing job, black-box: a server on port 0 with a temporary data dir and
//! index root, real files of every supported format (the PDF and DOCX are generated
//! here), and the job followed over SSE and polling like a browser would.

#![cfg(unix)]

use std::io::{Cursor, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use progress_hub::config::Config;
use progress_hub::hub::{Hub, Status};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{spawn_app_with, task_id, within, SseClient, TestApp};
use crate::pdf_fixture::{minimal_pdf, pdf_from_objects, pdf_objects};

/// A server whose index root(s) are given and whose data directory is its own.
pub(crate) struct Server {
    pub(crate) app: TestApp,
    _data: TempDir,
}

async fn spawn(roots: Vec<PathBuf>) -> Server {
    spawn_with(roots, |_| {}).await
}

pub(crate) async fn spawn_with(
    roots: Vec<PathBuf>,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> Server {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let app = spawn_app_with(move |config| {
        config.data_dir = data_dir;
        config.index_roots = roots;
        config.max_file_bytes = 10_000;
        config.index_threads = 2;
        // The default window: stages must show even when updates are merged.
        config.coalesce_ms = 50;
        tweak(config);
    })
    .await;
    Server { app, _data: data }
}

impl Server {
    async fn index(&self, folder: impl Into<Value>) -> reqwest::Response {
        self.app
            .post("/api/index-folder", json!({ "folder": folder.into() }))
            .await
    }

    /// Starts a job and returns its task id.
    pub(crate) async fn start(&self, folder: impl Into<Value>) -> String {
        let response = self.index(folder).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        let id = body["task_id"].as_str().unwrap().to_string();
        assert_eq!(
            body["events_url"],
            format!("/api/index-progress/{id}/events")
        );
        id
    }

    async fn search(&self, q: &str) -> (u16, Value) {
        let response = self
            .app
            .client
            .get(self.app.url("/api/search"))
            .query(&[("q", q)])
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub(crate) async fn hits(&self, q: &str) -> Vec<String> {
        let (status, body) = self.search(q).await;
        assert_eq!(status, 200, "{body}");
        body["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["path"].as_str().unwrap().to_string())
            .collect()
    }

    /// Long-polls the task until it is terminal; returns its last snapshot.
    pub(crate) async fn wait_until_finished(&self, id: &str) -> Value {
        self.wait_until_finished_reading_with(id, "").await
    }

    /// [`Server::wait_until_finished`] with a read token (`--protect-reads`).
    async fn wait_until_finished_reading_with(&self, id: &str, read_token: &str) -> Value {
        within(async {
            let mut since = 0;
            loop {
                let path =
                    format!("/api/index-progress/{id}?since={since}&wait=10&token={read_token}");
                let snapshot: Value = self.app.get(&path).await.json().await.unwrap();
                let status = snapshot["status"].as_str().unwrap();
                if ["completed", "failed", "cancelled"].contains(&status) {
                    return snapshot;
                }
                since = snapshot["seq"].as_u64().unwrap();
            }
        })
        .await
    }

    async fn status(&self, id: &str) -> Value {
        let task: Value = self
            .app
            .get(&format!("/api/tasks/{id}"))
            .await
            .json()
            .await
            .unwrap();
        task["status"].clone()
    }

    pub(crate) async fn stop(self) -> Hub {
        let hub = self.app.hub.clone();
        self.app.stop().await;
        hub
    }
}

/// The `/api/events` stream, as (event name, data) pairs.
pub(crate) struct Events(SseClient);

impl Events {
    pub(crate) async fn open(server: &Server) -> Events {
        let response = server.app.sse("/api/events", None).await;
        assert_eq!(response.status(), 200);
        Events(SseClient::new(response))
    }

    async fn next(&mut self) -> (String, Value) {
        let frame = self.0.next_event().await.expect("the stream stays open");
        (frame.event.clone().unwrap_or_default(), frame.json())
    }

    /// Events of task `id` up to and including its terminal one.
    pub(crate) async fn until_finished(&mut self, id: &str) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        loop {
            let (name, data) = self.next().await;
            if data["task_id"] != id {
                continue;
            }
            let terminal = name != "progress";
            seen.push((name, data));
            if terminal {
                return seen;
            }
        }
    }

    /// The first event of task `id` that satisfies `condition`.
    pub(crate) async fn until(&mut self, id: &str, condition: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (_, data) = self.next().await;
            if data["task_id"] == id && condition(&data) {
                return data;
            }
        }
    }
}

/// A DOCX holding the paragraphs given (only the part the indexer reads, plus the
/// content-types part every DOCX has).
fn minimal_docx(paragraphs: &[&str]) -> Vec<u8> {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<w:p><w:r><w:t>{p}</w:t></w:r></w:p>"))
        .collect();
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
    );
    let content_types = r#"<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("[Content_Types].xml", options).unwrap();
    zip.write_all(content_types.as_bytes()).unwrap();
    zip.start_file("word/document.xml", options).unwrap();
    zip.write_all(document.as_bytes()).unwrap();
    zip.finish().unwrap().into_inner()
}

pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// `base/root/docs` with one file of each kind the job must tell apart, and
/// `base/outside` beyond the root.
fn document_folder(base: &Path) -> PathBuf {
    let docs = base.join("root/docs");
    write(&docs.join("notes.txt"), "Plain notes about an aardvark.");
    write(
        &docs.join("readme.md"),
        "# Guide\n\nMarkdown about a **bumblebee**.\n",
    );
    write(
        &docs.join("page.html"),
        "<html><head><script>var hidden = 'zebra';</script></head>\
         <body><p>HTML about a capybara &amp; friends</p></body></html>",
    );
    write(&docs.join("main.rs"), "fn dingo() -> u32 { 42 }\n");
    write(
        &docs.join("report.pdf"),
        minimal_pdf("PDF about an echidna"),
    );
    write(
        &docs.join("letter.docx"),
        minimal_docx(&["DOCX about a flamingo", "Second paragraph"]),
    );
    write(
        &docs.join("broken.pdf"),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R",
    );
    // Well-formed, but its page uses a font object that is not there: indexed without
    // that font's text, the problem listed.
    let mut fontless = pdf_objects("no font");
    fontless.pop();
    write(&docs.join("fontless.pdf"), pdf_from_objects(&fontless));
    write(
        &docs.join("blob.dat"),
        [0x7f, b'E', b'L', b'F', 0, 0, 1, 2, 0, 0xff],
    );
    write(&docs.join("photo.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    write(&docs.join("big.txt"), "gigantic ".repeat(2_000));
    write(&docs.join("sub/.gitignore"), "ignored.txt\n");
    write(&docs.join("sub/ignored.txt"), "a gitignored gnu");
    write(&docs.join("sub/kept.txt"), "a kept koala");
    write(&docs.join(".hidden.txt"), "a hidden hedgehog");
    write(&base.join("outside/secret.txt"), "an outside platypus");
    symlink(base.join("outside/secret.txt"), docs.join("escape.txt")).unwrap();
    docs
}

pub(crate) fn base_dir(tmp: &TempDir) -> PathBuf {
    std::fs::canonicalize(tmp.path()).unwrap()
}

fn reason_of<'a>(list: &'a Value, file: &str) -> &'a str {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == file)
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_else(|| panic!("{file} not listed in {list}"))
}

#[tokio::test]
async fn indexes_every_format_and_accounts_for_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    let docs = document_folder(&base);
    let server = spawn(vec![base.join("root")]).await;

    let mut events = Events::open(&server).await;
    let id = server.start(docs.to_str().unwrap()).await;
    let seen = events.until_finished(&id).await;

    // Every stage is published, in order, before the terminal event.
    let mut stages: Vec<&str> = seen
        .iter()
        .filter_map(|(_, d)| d["detail"]["stage"].as_str())
        .collect();
    stages.dedup();
    assert_eq!(stages, ["counting", "indexing", "committing"], "{seen:?}");
    let (name, last) = seen.last().unwrap();
    assert_eq!(name, "completed", "{last}");
    assert_eq!(
        (last["processed"].as_u64(), last["total"].as_u64()),
        (Some(13), Some(13))
    );
    for (_, data) in &seen {
        let file = data["current_file"].as_str().unwrap();
        assert!(!file.starts_with('/'), "current_file is relative: {file}");
    }

    let results = &last["results"];
    assert_eq!(results["files_total"], 13, "{results}");
    assert_eq!(results["files_indexed"], 8, "{results}");
    assert_eq!(results["files_skipped"], 4, "{results}");
    assert_eq!(results["files_failed"], 1, "{results}");
    assert_eq!(results["files_partly_read"], 1, "{results}");
    assert_eq!(results["files_unchanged"], 0, "{results}");
    assert_eq!(
        results["indexed_by_format"],
        json!({"text": 2, "markdown": 1, "html": 1, "source": 1, "pdf": 2, "docx": 1})
    );
    assert_eq!(results["documents_in_index"], 8);
    assert_eq!(results["folder"], docs.to_str().unwrap());
    assert!(reason_of(&results["failures"], "broken.pdf").contains("unreadable PDF"));
    assert!(reason_of(&results["partly_read"], "fontless.pdf").contains("font F1: not found"));
    let skipped = &results["skipped"];
    assert_eq!(reason_of(skipped, "blob.dat"), "binary file");
    assert_eq!(reason_of(skipped, "photo.png"), "unsupported format (.png)");
    assert!(reason_of(skipped, "big.txt").contains("10000-byte limit"));
    assert!(reason_of(skipped, "escape.txt").contains("outside the index roots"));

    // Each word occurs in one file only, and each file's format was read.
    for (word, file) in [
        ("aardvark", "notes.txt"),
        ("bumblebee", "readme.md"),
        ("capybara", "page.html"),
        ("dingo", "main.rs"),
        ("echidna", "report.pdf"),
        ("flamingo", "letter.docx"),
        ("koala", "sub/kept.txt"),
    ] {
        assert_eq!(
            server.hits(word).await,
            [docs.join(file).to_str().unwrap()],
            "{word}"
        );
    }
    // Scripts, ignored, hidden, oversized and escaping files are not in the index.
    for word in ["zebra", "gnu", "hedgehog", "gigantic", "platypus"] {
        assert!(server.hits(word).await.is_empty(), "{word}");
    }
    let (_, found) = server.search("echidna").await;
    assert_eq!(found["total_hits"], 1);
    let hit = &found["hits"][0];
    assert!(
        hit["snippet"].as_str().unwrap().contains("<b>echidna</b>"),
        "{hit}"
    );
    assert!(hit["score"].as_f64().unwrap() > 0.0);

    server.stop().await;
}

#[tokio::test]
async fn search_rejects_bad_queries_with_the_parsers_message() {
    let tmp = tempfile::tempdir().unwrap();
    let server = spawn(vec![base_dir(&tmp)]).await;
    // Nothing indexed yet: an empty answer, not an error.
    assert!(server.hits("anything").await.is_empty());
    let (status, body) = server.search("body:(unclosed").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid query: "),
        "{body}"
    );
    let (status, body) = server.search("nosuchfield:word").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("nosuchfield"),
        "{body}"
    );
    let (status, body) = server.search("  ").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("q is required"))
    );
    // Queries that parse but that this index cannot run are the client's error too.
    for q in ["name:*", "body:*", "*"] {
        let (status, body) = server.search(q).await;
        assert!(status == 200 || status == 400, "{q}: {status} {body}");
        if status == 400 {
            assert!(body["error"].is_string(), "{q}: {body}");
        }
    }
    let (status, body) = server.search("name:*").await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn an_out_of_range_search_limit_is_clamped_and_a_bad_one_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    for i in 0..3 {
        write(
            &base.join(format!("docs/{i}.txt")),
            format!("serval number {i}"),
        );
    }
    let server = spawn(vec![base.clone()]).await;
    let done = server
        .wait_until_finished(&server.start("docs").await)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    for (limit, returned) in [
        ("-5", 1),
        ("0", 1),
        ("2", 2),
        ("1000", 3),
        ("-99999999999", 1),
    ] {
        let response = server
            .app
            .client
            .get(server.app.url("/api/search"))
            .query(&[("q", "serval"), ("limit", limit)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "limit={limit}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["total_hits"], 3, "limit={limit}: {body}");
        assert_eq!(
            body["hits"].as_array().unwrap().len(),
            returned,
            "limit={limit}"
        );
    }
    let response = server
        .app
        .client
        .get(server.app.url("/api/search?q=serval&limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn html_words_split_at_block_elements_only() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    write(
        &base.join("docs/iter.html"),
        "<html><body><h1>Struct Range<wbr>Inclusive<wbr>Iter</h1>\
         <p>An un<b>believ</b>able <code>Iter</code>ator</p><p>ocelot</p><div>margay</div>\
         </body></html>",
    );
    let server = spawn(vec![base.clone()]).await;
    let done = server
        .wait_until_finished(&server.start("docs").await)
        .await;
    assert_eq!(done["results"]["files_indexed"], 1, "{done}");
    let file = base.join("docs/iter.html").to_str().unwrap().to_string();
    for word in [
        "RangeInclusiveIter",
        "unbelievable",
        "Iterator",
        "ocelot",
        "margay",
    ] {
        assert_eq!(
            server.hits(word).await,
            std::slice::from_ref(&file),
            "{word}"
        );
    }
    for fragment in ["Inclusive", "believ", "ocelotmargay"] {
        assert!(server.hits(fragment).await.is_empty(), "{fragment}");
    }
    server.stop().await;
}

#[tokio::test]
async fn chinese_and_japanese_words_are_found_inside_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    let ja = base.join("docs/ja.txt");
    write(
        &ja,
        "自動採点システムを使うと、マークシー\nト形式の選択式問題を評定できます。\
         答案用紙をスキャンして、成績を自動的に計算します。",
    );
    let zh = base.join("docs/zh.html");
    write(
        &zh,
        "<p>这是一个自动评分系统的说明，支持<b>多项</b>选择题。</p>",
    );
    // Latin text keeps its words and its ranking: more mentions rank first.
    let en_many = base.join("docs/en-many.txt");
    write(&en_many, "grading grading grading with answer sheets");
    let en_once = base.join("docs/en-once.txt");
    write(
        &en_once,
        "automatic grading of multiple choice questions and more words",
    );
    let server = spawn(vec![base.clone()]).await;
    let done = server
        .wait_until_finished(&server.start("docs").await)
        .await;
    assert_eq!(done["results"]["files_indexed"], 4, "{done}");

    let ja_path = ja.to_str().unwrap().to_string();
    for word in [
        "選択式",
        "評定",
        "自動採点",
        "マークシート",
        "式",
        "自動採点 マークシート",
    ] {
        assert_eq!(
            server.hits(word).await,
            std::slice::from_ref(&ja_path),
            "{word}"
        );
    }
    let zh_path = zh.to_str().unwrap().to_string();
    for word in ["评分", "自动评分系统", "多项选择题"] {
        assert_eq!(
            server.hits(word).await,
            std::slice::from_ref(&zh_path),
            "{word}"
        );
    }
    // A line break inside a word ("マークシー\nト") does not split it. The characters
    // must stand together, in this order.
    for word in ["採点式", "定評", "シートマーク"] {
        assert!(server.hits(word).await.is_empty(), "{word}");
    }
    let (_, found) = server.search("評定").await;
    let snippet = found["hits"][0]["snippet"].as_str().unwrap();
    assert!(snippet.contains("<b>評定</b>"), "{snippet}");

    let en = [en_many, en_once].map(|p| p.to_str().unwrap().to_string());
    assert_eq!(server.hits("grading").await, en);
    server.stop().await;
}

#[tokio::test]
async fn pdfs_keep_what_can_be_read_and_list_what_cannot() {
    use crate::pdf_fixture::{bad_middle_page_pdf, cjk_cmap_pdf, one_byte_to_unicode_pdf};
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    let docs = base.join("docs");
    write(&docs.join("tex.pdf"), one_byte_to_unicode_pdf());
    write(
        &docs.join("amc.pdf"),
        cjk_cmap_pdf("自動採点では、マークシートの選択式問題を評定します。"),
    );
    write(&docs.join("pages.pdf"), bad_middle_page_pdf());
    // Written by reportlab (tests/fixtures/pdf/make_reportlab_cjk.py).
    write(
        &docs.join("reportlab.pdf"),
        include_bytes!("../fixtures/pdf/reportlab-cjk.pdf"),
    );
    let server = spawn(vec![base.clone()]).await;
    let done = server
        .wait_until_finished(&server.start("docs").await)
        .await;
    let results = &done["results"];
    assert_eq!(results["files_indexed"], 4, "{results}");
    assert_eq!(results["files_failed"], 0, "{results}");
    assert_eq!(results["files_partly_read"], 2, "{results}");
    assert!(reason_of(&results["partly_read"], "amc.pdf").contains("font F3"));
    assert!(reason_of(&results["partly_read"], "pages.pdf").starts_with("page 2: "));
    let path = |name: &str| docs.join(name).to_str().unwrap().to_string();
    for (word, file) in [
        ("verification", "tex.pdf"),
        ("defined", "tex.pdf"),
        ("efficient", "tex.pdf"),
        ("survive", "amc.pdf"),
        ("システム", "reportlab.pdf"),
        ("English", "reportlab.pdf"),
        ("gnu", "pages.pdf"),
        ("yak", "pages.pdf"),
    ] {
        assert_eq!(server.hits(word).await, [path(file)], "{word}");
    }
    // In both Japanese files.
    for word in ["選択式", "評定", "自動採点", "マークシート"] {
        let mut hits = server.hits(word).await;
        hits.sort();
        assert_eq!(hits, [path("amc.pdf"), path("reportlab.pdf")], "{word}");
    }
    server.stop().await;
}

#[tokio::test]
async fn reindexing_replaces_the_folder_and_skips_unchanged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    let folder = base.join("notes");
    for i in 0..5 {
        write(
            &folder.join(format!("n{i}.txt")),
            format!("note {i} mentions word{i}"),
        );
    }
    let server = spawn(vec![base.clone()]).await;
    let first = server
        .wait_until_finished(&server.start(folder.to_str().unwrap()).await)
        .await;
    assert_eq!(first["results"]["files_indexed"], 5);

    write(&folder.join("n1.txt"), "note 1 now mentions walrus");
    std::fs::remove_file(folder.join("n2.txt")).unwrap();
    write(&folder.join("n5.txt"), "a new note about a wombat");
    // Relative to the first root, as a client may send it.
    let response = server.index("notes").await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = server.wait_until_finished(&id).await;
    let results = &second["results"];
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(results["files_indexed"], 2, "{results}");
    assert_eq!(results["files_unchanged"], 3, "{results}");
    assert_eq!(results["files_removed"], 1, "{results}");
    assert_eq!(results["documents_in_index"], 5, "{results}");
    assert!(server.hits("word1").await.is_empty());
    assert!(server.hits("word2").await.is_empty());
    assert_eq!(server.hits("walrus").await.len(), 1);
    assert_eq!(server.hits("wombat").await.len(), 1);
    assert_eq!(server.hits("word3").await.len(), 1);

    let third = server
        .wait_until_finished(&server.start(folder.to_str().unwrap()).await)
        .await;
    assert_eq!(third["results"]["files_unchanged"], 5);
    assert_eq!(third["results"]["files_indexed"], 0);
    server.stop().await;
}

#[tokio::test]
async fn folders_outside_the_roots_are_refused_whether_or_not_they_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    let root = base.join("root");
    write(&root.join("docs/a.txt"), "a");
    write(&base.join("outside/b.txt"), "b");
    symlink(base.join("outside"), root.join("link-out")).unwrap();
    symlink(root.join("docs"), root.join("link-in")).unwrap();
    // The configured root itself is reached through a symlink: what counts is where it is.
    symlink(&root, base.join("root-alias")).unwrap();
    let server = spawn(vec![base.join("root-alias")]).await;

    let outside = base.join("outside");
    let forbidden = [
        json!("../outside"),
        json!("../no-such-folder"),
        json!("docs/../../outside"),
        json!(outside.to_str().unwrap()),
        json!(base.join("no-such-folder").to_str().unwrap()),
        json!("/"),
        json!("link-out"),
        json!("link-out/../outside"),
        json!("link-out/missing"),
    ];
    for folder in forbidden {
        let response = server.index(folder.clone()).await;
        assert_eq!(response.status(), 403, "{folder}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"], "Folder is outside the index roots",
            "{folder}"
        );
    }
    assert_eq!(server.index("missing").await.status(), 404);
    assert_eq!(server.index("docs/a.txt").await.status(), 422);
    assert_eq!(server.index("").await.status(), 422);
    assert_eq!(server.index(5).await.status(), 422);
    let no_folder = server
        .app
        .client
        .post(server.app.url("/api/index-folder"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(no_folder.status(), 422);

    // Inside the roots, through a link or through the aliased root, is fine.
    for folder in [
        "link-in",
        "docs/../docs",
        base.join("root-alias/docs").to_str().unwrap(),
    ] {
        let response = server.index(folder).await;
        assert_eq!(response.status(), 202, "{folder}");
        let id = response.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(server.wait_until_finished(&id).await["status"], "completed");
    }
    server.stop().await;
}

/// Thousands of small files: enough for the job to be mid-way when the cancel lands.
pub(crate) fn many_files(folder: &Path, count: usize, word: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let filler = "lorem ipsum dolor sit amet ".repeat(40);
    for i in 0..count {
        let dir = folder.join(format!("d{}", i % 50));
        if i < 50 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("{word} {i} {filler}"),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn cancel_stops_a_large_job_and_leaves_the_index_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    many_files(&base.join("big"), 5_000, "quetzal");
    write(&base.join("small/one.txt"), "a single tapir");
    // Without checkpoints a cancelled job leaves nothing of itself in the index.
    let server = spawn_with(vec![base.clone()], |c| c.index_checkpoint_secs = 0).await;

    let mut events = Events::open(&server).await;
    let id = server.start(base.join("big").to_str().unwrap()).await;
    let midway = events
        .until(&id, |d| {
            d["detail"]["stage"] == "indexing" && d["processed"].as_u64() > Some(0)
        })
        .await;
    assert!(
        midway["processed"].as_u64() < midway["total"].as_u64(),
        "{midway}"
    );
    let cancel = server
        .app
        .post(&format!("/api/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancel.status(), 200);
    let (name, data) = events.until_finished(&id).await.pop().unwrap();
    assert_eq!(
        (name.as_str(), data["status"].as_str()),
        ("cancelled", Some("cancelled"))
    );

    // The next job needs the writer the cancelled one held: it completes only once the
    // cancelled job has really stopped.
    let next = server.start(base.join("small").to_str().unwrap()).await;
    let done = server.wait_until_finished(&next).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["results"]["documents_in_index"], 1,
        "rolled back: {done}"
    );
    assert!(server.hits("quetzal").await.is_empty());
    assert_eq!(server.status(&id).await, "cancelled");
    server.stop().await;
}

#[tokio::test]
async fn a_job_running_at_shutdown_ends_failed_as_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    many_files(&base.join("big"), 5_000, "okapi");
    let server = spawn(vec![base.clone()]).await;
    let mut events = Events::open(&server).await;
    let id = server.start(base.join("big").to_str().unwrap()).await;
    events
        .until(&id, |d| d["detail"]["stage"] == "indexing")
        .await;
    let hub = server.stop().await;
    let task = hub.get(&task_id(&id)).unwrap();
    assert_eq!(task.status(), Status::Failed);
    let snapshot: Value = serde_json::from_slice(task.json().as_ref()).unwrap();
    assert_eq!(snapshot["error"], "interrupted by server shutdown");
}

#[tokio::test]
async fn with_tokens_indexing_is_a_write_and_search_a_protected_read() {
    const ADMIN: &str = "admin-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let base = base_dir(&tmp);
    write(&base.join("docs/a.txt"), "a lone narwhal");
    let server = spawn_with(vec![base.clone()], |c| {
        c.api_token = Some(ADMIN.to_string());
        c.protect_reads = true;
    })
    .await;
    let client = &server.app.client;
    let index = |token: Option<&str>| {
        let mut request = client
            .post(server.app.url("/api/index-folder"))
            .json(&json!({"folder": "docs"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(index(None).await.unwrap().status(), 401);
    assert_eq!(
        index(Some("wrong-token-000000")).await.unwrap().status(),
        401
    );
    let started = index(Some(ADMIN)).await.unwrap();
    assert_eq!(started.status(), 202);
    let body: Value = started.json().await.unwrap();
    let id = body["task_id"].as_str().unwrap();
    let read_token = body["read_token"].as_str().expect("read_token");
    // The read token follows the job, as for any task.
    let done = server
        .wait_until_finished_reading_with(id, read_token)
        .await;
    assert_eq!(done["status"], "completed", "{done}");

    let search = |token: Option<&str>| {
        let mut request = client
            .get(server.app.url("/api/search"))
            .query(&[("q", "narwhal")]);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(search(None).await.unwrap().status(), 401);
    let found: Value = search(Some(ADMIN)).await.unwrap().json().await.unwrap();
    assert_eq!(found["total_hits"], 1, "{found}");
    server.stop().await;
}
