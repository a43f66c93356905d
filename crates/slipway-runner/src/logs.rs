//! Job logs: a sink that takes a job's raw output in chunks of any size, masks the values
//! of secret variables (whatever the chunk boundaries), splits it into lines, appends
//! it to the job's log file and hands each line to a listener (the console, a live log
//! stream). Nothing is truncated and memory stays flat: at most one partial line of
//! [`MAX_LINE`] bytes is held.

use aho_corasick::{AhoCorasick, MatchKind};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

/// A partial line longer than this is passed on as it is, so a job that never prints
/// a newline cannot grow memory.
pub const MAX_LINE: usize = 64 * 1024;
/// What a masked value is replaced with, as on GitLab.
pub const MASK: &str = "[MASKED]";

/// Receives each (masked) line, without its line break, as the job prints it.
pub trait LineListener: Send + Sync {
    fn line(&self, line: &str);
    /// Called once a chunk of output has been split into lines: a good moment to flush a
    /// console that buffers lines.
    fn chunk_done(&self) {}
}

impl<F: Fn(&str) + Send + Sync> LineListener for F {
    fn line(&self, line: &str) {
        self(line)
    }
}

/// Replaces secret values in text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<Vec<u8>>,
    /// One automaton for every secret: masking stays linear in the output size.
    matcher: Option<AhoCorasick>,
}

impl Masker {
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for v in values {
            // A multi-line value is masked line by line: output is handled by lines.
            for part in v.as_ref().split('\n') {
                let part = part.trim_end_matches('\r');
                if !part.is_empty() {
                    secrets.push(part.as_bytes().to_vec());
                }
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let matcher = if secrets.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&secrets)
                .ok()
        };
        Masker { secrets, matcher }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The longest secret, in bytes.
    pub fn longest(&self) -> usize {
        self.secrets.first().map(|s| s.len()).unwrap_or(0)
    }

    /// Mask every occurrence of every secret.
    pub fn mask(&self, text: &[u8]) -> Vec<u8> {
        let Some(m) = &self.matcher else {
            return text.to_vec();
        };
        let mut out = Vec::with_capacity(text.len());
        let mut last = 0;
        for found in m.find_iter(text) {
            out.extend_from_slice(&text[last..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            last = found.end();
        }
        out.extend_from_slice(&text[last..]);
        out
    }

    /// `cut`, or the start of the secret that spans it in `text`: where `text` can be
    /// split without either part holding a piece of a secret.
    fn safe_cut(&self, text: &[u8], cut: usize) -> usize {
        let Some(m) = &self.matcher else {
            return cut;
        };
        for found in m.find_iter(text) {
            if found.start() >= cut {
                break;
            }
            if found.end() > cut {
                return found.start();
            }
        }
        cut
    }

    pub fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }
}

struct State {
    partial: Vec<u8>,
    file: Option<BufWriter<File>>,
    bytes: u64,
    lines: u64,
}

/// One job's log.
pub struct LogSink {
    masker: Masker,
    listener: Option<Box<dyn LineListener>>,
    state: Mutex<State>,
}

impl LogSink {
    /// A sink writing to `path` (created or truncated).
    pub fn to_file(
        path: &Path,
        masker: Masker,
        listener: Option<Box<dyn LineListener>>,
    ) -> std::io::Result<LogSink> {
        // The directory usually exists (a pipeline's logs share one): made only if not.
        let file = match File::create(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                File::create(path)?
            }
            other => other?,
        };
        Ok(LogSink {
            masker,
            listener,
            state: Mutex::new(State {
                partial: Vec::new(),
                file: Some(BufWriter::with_capacity(64 * 1024, file)),
                bytes: 0,
                lines: 0,
            }),
        })
    }

    /// A sink that only forwards lines (tests, dry runs).
    pub fn detached(masker: Masker, listener: Option<Box<dyn LineListener>>) -> LogSink {
        LogSink {
            masker,
            listener,
            state: Mutex::new(State {
                partial: Vec::new(),
                file: None,
                bytes: 0,
                lines: 0,
            }),
        }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Raw output from the job, in chunks of any size.
    pub fn write(&self, chunk: &[u8]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            st.partial.extend_from_slice(&rest[..pos]);
            let line = std::mem::take(&mut st.partial);
            self.emit(&mut st, &line, true);
            rest = &rest[pos + 1..];
        }
        st.partial.extend_from_slice(rest);
        if st.partial.len() > MAX_LINE {
            // Keep enough of the tail that a secret cut by this flush is still found whole.
            let keep = self
                .masker
                .longest()
                .saturating_sub(1)
                .min(st.partial.len());
            // ... and never cut through a secret that is already whole in the buffer.
            let cut = self.masker.safe_cut(&st.partial, st.partial.len() - keep);
            if cut > 0 {
                let head: Vec<u8> = st.partial.drain(..cut).collect();
                self.emit(&mut st, &head, false);
            }
        }
        if let Some(f) = st.file.as_mut() {
            let _ = f.flush();
        }
        if let Some(l) = &self.listener {
            l.chunk_done();
        }
    }

    /// A line from Slipway itself (section markers, status), not from the job.
    pub fn system(&self, line: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.partial.is_empty() {
            let line = std::mem::take(&mut st.partial);
            self.emit(&mut st, &line, true);
        }
        self.emit(&mut st, line.as_bytes(), true);
        if let Some(f) = st.file.as_mut() {
            let _ = f.flush();
        }
        if let Some(l) = &self.listener {
            l.chunk_done();
        }
    }

    fn emit(&self, st: &mut State, raw: &[u8], complete: bool) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let masked = self.masker.mask(raw);
        if let Some(f) = st.file.as_mut() {
            let _ = f.write_all(&masked);
            if complete {
                let _ = f.write_all(b"\n");
            }
        }
        st.bytes += masked.len() as u64 + u64::from(complete);
        if complete {
            st.lines += 1;
        }
        if let Some(l) = &self.listener {
            l.line(&String::from_utf8_lossy(&masked));
        }
    }

    /// Flush what is left (a last line without a newline) and close the file.
    pub fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.partial.is_empty() {
            let line = std::mem::take(&mut st.partial);
            self.emit(&mut st, &line, true);
        }
        if let Some(mut f) = st.file.take() {
            let _ = f.flush();
        }
        if let Some(l) = &self.listener {
            l.chunk_done();
        }
    }

    /// Bytes and lines written so far.
    pub fn size(&self) -> (u64, u64) {
        self.state
            .lock()
            .map(|s| (s.bytes, s.lines))
            .unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    fn collect(masker: Masker) -> (LogSink, Arc<StdMutex<Vec<String>>>) {
        let lines = Arc::new(StdMutex::new(Vec::new()));
        let l2 = lines.clone();
        let sink = LogSink::detached(
            masker,
            Some(Box::new(move |s: &str| {
                l2.lock().expect("lock").push(s.to_string())
            })),
        );
        (sink, lines)
    }

    #[test]
    fn splits_lines_across_chunks() {
        let (sink, lines) = collect(Masker::default());
        sink.write(b"hel");
        sink.write(b"lo\nwor");
        sink.write(b"ld\r\n\nlast");
        sink.finish();
        assert_eq!(
            *lines.lock().expect("lock"),
            vec!["hello", "world", "", "last"]
        );
    }

    #[test]
    fn masks_secrets_split_across_chunks_at_every_position() {
        let secret = "s3cr3t-VALUE-123";
        let text = format!("token={secret} and again {secret}\n");
        for cut in 0..text.len() {
            let (sink, lines) = collect(Masker::new([secret]));
            sink.write(&text.as_bytes()[..cut]);
            sink.write(&text.as_bytes()[cut..]);
            sink.finish();
            let got = lines.lock().expect("lock").join("\n");
            assert!(!got.contains(secret), "cut at {cut}: {got}");
            assert_eq!(got, "token=[MASKED] and again [MASKED]");
        }
    }

    #[test]
    fn masks_secrets_in_overlong_lines() {
        let secret = "ABCDEFGHIJKLMNOP";
        let (sink, lines) = collect(Masker::new([secret]));
        let mut text = vec![b'x'; MAX_LINE - 5];
        text.extend_from_slice(secret.as_bytes());
        text.extend_from_slice(&vec![b'y'; MAX_LINE]);
        for chunk in text.chunks(1000) {
            sink.write(chunk);
        }
        sink.finish();
        let joined: String = lines.lock().expect("lock").concat();
        assert!(!joined.contains(secret));
        assert!(joined.contains(MASK));
    }

    /// A line longer than the buffer is passed on in pieces; a secret must never be split
    /// between two pieces, wherever it falls.
    #[test]
    fn secrets_straddling_the_flush_of_an_overlong_line() {
        let secret = "0123456789ABCDEFGHIJ";
        for offset in MAX_LINE - 45..MAX_LINE + 25 {
            let (sink, lines) = collect(Masker::new([secret]));
            let mut text = vec![b'x'; offset];
            text.extend_from_slice(secret.as_bytes());
            text.extend_from_slice(&[b'y'; 100]);
            for chunk in text.chunks(4096) {
                sink.write(chunk);
            }
            sink.finish();
            let got = lines.lock().expect("lock");
            for l in got.iter() {
                for n in 4..=secret.len() {
                    for w in secret.as_bytes().windows(n) {
                        let piece = std::str::from_utf8(w).expect("ascii");
                        // No piece of the secret of 4+ characters in any line.
                        assert!(!l.contains(piece), "offset {offset}: {piece:?} leaked");
                    }
                }
            }
            assert_eq!(got.concat().matches(MASK).count(), 1, "offset {offset}");
        }
    }

    #[test]
    fn longest_secret_wins() {
        let m = Masker::new(["abc", "abcdef"]);
        assert_eq!(m.mask_str("xabcdefx abc"), "x[MASKED]x [MASKED]");
    }

    #[test]
    fn writes_masked_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("job.log");
        let sink = LogSink::to_file(&path, Masker::new(["hunter2"]), None).expect("sink");
        sink.write(b"password is hunter2\n");
        sink.system("done");
        sink.finish();
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "password is [MASKED]\ndone\n");
    }
}
