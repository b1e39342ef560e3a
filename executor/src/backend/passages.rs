//! Splitting a Markdown or text document into passages for retrieval.
//!
//! A passage is a run of paragraphs under one heading, at most `max_chars` long: small enough
//! that BM25 scores reflect one topic and a citation points at something a reader can check,
//! large enough to carry the sentence that answers a question. Fenced code blocks are kept
//! whole (blank lines inside them do not end a paragraph, `#` lines inside them are not
//! headings).

/// One retrievable piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passage {
    /// Path relative to the indexed folder, with `/` separators.
    pub document: String,
    /// 1-based position within the document.
    pub number: u32,
    /// The nearest heading above the passage (empty before the first heading).
    pub heading: String,
    pub text: String,
}

/// Splits `text` into passages of at most `max_chars` characters (a single word longer than
/// that is the only exception).
pub(crate) fn split(document: &str, text: &str, max_chars: usize) -> Vec<Passage> {
    let max_chars = max_chars.max(80);
    let mut builder = Builder {
        document,
        max_chars,
        heading: String::new(),
        current: String::new(),
        out: Vec::new(),
    };
    let mut paragraph = String::new();
    let mut fence: Option<&str> = None;

    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence {
            paragraph.push_str(line);
            paragraph.push('\n');
            if trimmed.starts_with(marker) {
                fence = None;
            }
            continue;
        }
        if let Some(marker) = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m)) {
            fence = Some(marker);
            paragraph.push_str(line);
            paragraph.push('\n');
        } else if let Some(heading) = heading_text(line) {
            builder.paragraph(&paragraph);
            paragraph.clear();
            builder.flush();
            builder.heading = heading.to_owned();
        } else if trimmed.is_empty() {
            builder.paragraph(&paragraph);
            paragraph.clear();
        } else {
            paragraph.push_str(line.trim_end());
            paragraph.push('\n');
        }
    }
    builder.paragraph(&paragraph);
    builder.flush();
    builder.out
}

/// The text of an ATX heading (`# Title`), if `line` is one.
fn heading_text(line: &str) -> Option<&str> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let after = &rest[hashes..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    Some(after.trim().trim_end_matches('#').trim())
}

struct Builder<'a> {
    document: &'a str,
    max_chars: usize,
    heading: String,
    current: String,
    out: Vec<Passage>,
}

impl Builder<'_> {
    fn paragraph(&mut self, paragraph: &str) {
        let paragraph = paragraph.trim_end();
        if paragraph.trim().is_empty() {
            return;
        }
        if char_len(&self.current) + 2 + char_len(paragraph) > self.max_chars {
            self.flush();
        }
        if char_len(paragraph) > self.max_chars {
            for piece in pieces(paragraph, self.max_chars) {
                self.current = piece;
                self.flush();
            }
            return;
        }
        if !self.current.is_empty() {
            self.current.push_str("\n\n");
        }
        self.current.push_str(paragraph);
    }

    fn flush(&mut self) {
        if self.current.trim().is_empty() {
            self.current.clear();
            return;
        }
        let number = u32::try_from(self.out.len() + 1).unwrap_or(u32::MAX);
        self.out.push(Passage {
            document: self.document.to_owned(),
            number,
            heading: self.heading.clone(),
            text: std::mem::take(&mut self.current),
        });
    }
}

/// Cuts an over-long paragraph at sentence ends where possible, else at whitespace.
fn pieces(paragraph: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for sentence in sentence_spans(paragraph) {
        for word_run in bounded(sentence, max_chars) {
            if !current.is_empty() && char_len(&current) + 1 + char_len(word_run) > max_chars {
                out.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word_run);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Splits `text` after `.`, `!` or `?` followed by whitespace.
fn sentence_spans(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?')
            && chars.peek().is_some_and(|(_, next)| next.is_whitespace())
        {
            let end = i + c.len_utf8();
            let s = text[start..end].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = end;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Cuts a sentence longer than `max_chars` at whitespace.
fn bounded(sentence: &str, max_chars: usize) -> Vec<&str> {
    if char_len(sentence) <= max_chars {
        return vec![sentence];
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut last_space = None;
    let mut count = 0;
    for (i, c) in sentence.char_indices() {
        if c.is_whitespace() {
            last_space = Some(i);
        }
        count += 1;
        if count > max_chars
            && let Some(space) = last_space.filter(|s| *s > start)
        {
            out.push(sentence[start..space].trim());
            start = space;
            count = sentence[start..=i].chars().count();
            last_space = None;
        }
    }
    out.push(sentence[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Sentences of a passage or context, for extractive answers: lines first (lists, table rows),
/// then sentence ends within a line. Markdown list markers and code fences are dropped.
pub(crate) fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut paragraph = String::new();
    let push_paragraph = |paragraph: &mut String, out: &mut Vec<String>| {
        for s in sentence_spans(paragraph) {
            out.push(s.to_owned());
        }
        paragraph.clear();
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            push_paragraph(&mut paragraph, &mut out);
            continue;
        }
        if in_fence || trimmed.is_empty() {
            push_paragraph(&mut paragraph, &mut out);
            continue;
        }
        let item = strip_list_marker(trimmed);
        if trimmed.starts_with('|') {
            // A table row stands alone even without a full stop.
            push_paragraph(&mut paragraph, &mut out);
            paragraph.push_str(item);
            push_paragraph(&mut paragraph, &mut out);
        } else if item.len() != trimmed.len() {
            // A list item ends the sentence before it; its wrapped lines continue it.
            push_paragraph(&mut paragraph, &mut out);
            paragraph.push_str(item);
        } else {
            if !paragraph.is_empty() {
                paragraph.push(' ');
            }
            paragraph.push_str(item);
        }
    }
    push_paragraph(&mut paragraph, &mut out);
    out
}

fn strip_list_marker(line: &str) -> &str {
    for marker in ["- ", "* ", "+ ", "> "] {
        if let Some(rest) = line.strip_prefix(marker) {
            return rest.trim_start();
        }
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0
        && let Some(rest) = line[digits..]
            .strip_prefix(". ")
            .or_else(|| line[digits..].strip_prefix(") "))
    {
        return rest.trim_start();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_start_new_passages_and_number_from_one() {
        let doc = "# Title\n\nIntro paragraph.\n\n## Install\n\nRun the installer.\nThen start it.\n\n## Use\n\nSubmit a task.\n";
        let p = split("a.md", doc, 1000);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].number, p[0].heading.as_str()), (1, "Title"));
        assert_eq!(p[1].heading, "Install");
        assert_eq!(p[1].text, "Run the installer.\nThen start it.");
        assert_eq!((p[2].number, p[2].text.as_str()), (3, "Submit a task."));
        assert!(p.iter().all(|p| p.document == "a.md"));
    }

    #[test]
    fn passages_respect_the_size_bound() {
        let paragraph = "This sentence has a handful of words in it. ".repeat(40);
        let doc = format!("{paragraph}\n\n{paragraph}\n");
        let p = split("long.txt", &doc, 200);
        assert!(p.len() > 8, "{} passages", p.len());
        for passage in &p {
            assert!(
                passage.text.chars().count() <= 200,
                "{}",
                passage.text.len()
            );
        }
        let total: usize = p.iter().map(|p| p.text.split_whitespace().count()).sum();
        assert_eq!(total, doc.split_whitespace().count(), "no words lost");
    }

    #[test]
    fn code_fences_stay_whole() {
        let doc = "# Setup\n\n```sh\n# not a heading\n\necho hi\n```\n";
        let p = split("a.md", doc, 1000);
        assert_eq!(p.len(), 1);
        assert!(p[0].text.contains("# not a heading\n\necho hi"));
        assert_eq!(p[0].heading, "Setup");
    }

    #[test]
    fn hash_without_space_is_not_a_heading() {
        assert_eq!(heading_text("#hashtag"), None);
        assert_eq!(heading_text("### Deep ###"), Some("Deep"));
        assert_eq!(heading_text("    # indented code"), None);
    }

    #[test]
    fn sentences_split_lists_and_full_stops() {
        let s = sentences(
            "First one. Second one!\n- item a\n- item b wraps\n  onto two lines\n\n```\ncode();\n```\n| a | b |\nLast",
        );
        assert_eq!(
            s,
            [
                "First one.",
                "Second one!",
                "item a",
                "item b wraps onto two lines",
                "| a | b |",
                "Last"
            ]
        );
    }
}
