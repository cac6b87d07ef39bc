//! Streaming evaluation: files larger than memory go through in windows of
//! rows, read → compute → write in three threads, so the reading of window
//! `k + 1`, the work on window `k` and the writing of window `k - 1` overlap
//! (double buffering: at most two windows of inputs and two of outputs are
//! alive at once).
//!
//! - [`window_rows`]: how many rows a window holds under a memory budget.
//! - [`run_pipeline`]: the three-stage loop over [`ArrayFile`] inputs and
//!   [`NpyWriter`] outputs.
//! - [`RowFold`]: the `mean` / `sum` of per-row losses in row order, the
//!   same sequence of additions whatever the windows are.
//! - [`OutputFiles`]: outputs under temporary names, renamed only when the
//!   whole run succeeded, removed on any failure (Ctrl-C included).
//! - [`available_bytes`]: free space on the output's filesystem.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use crate::io::{ArrayFile, NpyWriter};

/// `eval`'s default `--memory-budget`.
pub const DEFAULT_MEMORY_BUDGET: u64 = 512 << 20;

/// Rows per window: as many as fit `budget - resident` at `per_row` bytes
/// each, at most `rows`, a multiple of `align` (e.g. a whole chunk) when
/// more than one window is needed.
/// An error names the budget and what one window needs when it cannot fit.
pub fn window_rows(
    rows: usize,
    per_row: u64,
    budget: u64,
    resident: u64,
    align: usize,
) -> Result<usize, String> {
    let align = align.max(1);
    let free = budget.saturating_sub(resident);
    let least = per_row.saturating_mul(align.min(rows.max(1)) as u64);
    if free < least {
        return Err(format!(
            "--memory-budget {budget} bytes is too small: {resident} bytes stay resident and one window of {} rows needs {least} more (raise it to at least {})",
            align.min(rows.max(1)),
            resident.saturating_add(least)
        ));
    }
    let fit = (free / per_row.max(1)).min(rows as u64) as usize;
    if fit >= rows {
        return Ok(rows.max(1));
    }
    Ok((fit / align * align).max(align))
}

/// One window of rows: where it starts, how many rows, and each streamed
/// input's values for them (f32, in input order).
#[derive(Debug)]
pub struct Window {
    /// First row.
    pub first: usize,
    /// Rows in this window.
    pub rows: usize,
    /// Each input's `rows · row_len` values.
    pub inputs: Vec<Vec<f32>>,
}

/// A streamed input: `row_len` elements of the file per row.
#[derive(Debug)]
pub struct StreamIn {
    /// The file.
    pub file: ArrayFile,
    /// Elements per row.
    pub row_len: usize,
}

/// A streamed output: `row_len` values per row, appended window by window.
#[derive(Debug)]
pub struct StreamOut {
    /// The file being written.
    pub writer: NpyWriter,
    /// Values per row.
    pub row_len: usize,
}

/// Progress of a streamed run: rows done, GB/s and time left on stderr
/// (hidden when stderr is not a terminal), and the totals for `--json`.
#[derive(Debug)]
pub struct Progress {
    bar: indicatif::ProgressBar,
    bytes_per_row: u64,
    started: Instant,
    /// Rows finished.
    pub rows: u64,
}

impl Progress {
    /// A bar over `rows` rows, each moving `bytes_per_row` bytes (read and written).
    pub fn new(rows: usize, bytes_per_row: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(rows as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} rows, {msg}, {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress {
            bar,
            bytes_per_row,
            started: Instant::now(),
            rows: 0,
        }
    }

    fn advance(&mut self, rows: usize) {
        self.rows += rows as u64;
        self.bar.set_position(self.rows);
        self.bar.set_message(format!("{:.2} GB/s", self.rate()));
    }

    /// Bytes read and written so far.
    pub fn bytes(&self) -> u64 {
        self.rows * self.bytes_per_row
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// GB/s so far.
    pub fn rate(&self) -> f64 {
        self.bytes() as f64 / self.seconds().max(1e-9) / 1e9
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// `--json`'s summary line.
    pub fn json(&self, windows: usize, window_rows: usize) -> String {
        format!(
            "{{\"rows\": {}, \"bytes\": {}, \"seconds\": {:.6}, \"gb_per_s\": {:.6}, \"windows\": {windows}, \"window_rows\": {window_rows}}}",
            self.rows,
            self.bytes(),
            self.seconds(),
            self.rate()
        )
    }
}

/// Set by Ctrl-C (see [`interrupt_flag`]).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The flag Ctrl-C sets, with the handler installed on first use: a run
/// checks it between windows and fails cleanly (removing its outputs).
pub fn interrupt_flag() -> &'static AtomicBool {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Without a handler Ctrl-C still stops the process, leaving only
        // hidden `.partial` files; nothing better can be done then.
        ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).ok();
    });
    &INTERRUPTED
}

/// Runs `compute` over `windows` (first row, rows): a reader thread reads
/// each window of every input, `compute` (on this thread, where the GPU
/// context lives) turns it into one `Vec` per output (`rows · row_len`
/// values each), and a writer thread appends them. Returns the outputs,
/// unfinished, for the caller to finish and rename. Stops at the first
/// error, or when `interrupted` is set.
pub fn run_pipeline(
    windows: &[(usize, usize)],
    mut inputs: Vec<StreamIn>,
    mut outputs: Vec<StreamOut>,
    progress: &mut Progress,
    interrupted: &AtomicBool,
    mut compute: impl FnMut(Window) -> Result<Vec<Vec<f32>>, String>,
) -> Result<Vec<StreamOut>, String> {
    let interrupt = || "interrupted (Ctrl-C); no outputs were written".to_string();
    let result = std::thread::scope(|scope| {
        let (read_tx, read_rx) = sync_channel::<Result<Window, String>>(0);
        let (write_tx, write_rx) = sync_channel::<Vec<Vec<f32>>>(0);
        let inputs = &mut inputs;
        let outputs_ref = &mut outputs;
        let reader = scope.spawn(move || {
            for &(first, n) in windows {
                if interrupted.load(Ordering::SeqCst) {
                    return;
                }
                let window = inputs
                    .iter_mut()
                    .map(|i| {
                        i.file
                            .read_f32(first * i.row_len, n * i.row_len)
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, String>>()
                    .map(|inputs| Window {
                        first,
                        rows: n,
                        inputs,
                    });
                let failed = window.is_err();
                if read_tx.send(window).is_err() || failed {
                    return;
                }
            }
        });
        let writer = scope.spawn(move || -> Result<(), String> {
            for values in write_rx {
                for (out, v) in outputs_ref.iter_mut().zip(&values) {
                    out.writer.append(v).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        });
        let mut result = Ok(());
        for window in read_rx {
            if interrupted.load(Ordering::SeqCst) {
                result = Err(interrupt());
                break;
            }
            let n = window.as_ref().map_or(0, |w| w.rows);
            let computed = window.and_then(&mut compute);
            match computed {
                Ok(values) => {
                    if write_tx.send(values).is_err() {
                        break; // The writer failed; its error is below.
                    }
                    progress.advance(n);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(write_tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err("the writer thread panicked".into()));
        reader.join().ok();
        result.and(written)
    });
    progress.finish();
    if result.is_ok() && interrupted.load(Ordering::SeqCst) {
        return Err(interrupt());
    }
    result.map(|()| outputs)
}

/// The `mean` or `sum` of per-row (or per-element) losses: an f64 sum in
/// row order, so windows of any size give the same bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowFold {
    sum: f64,
}

impl RowFold {
    /// Adds the next values, in row order.
    pub fn add(&mut self, values: impl IntoIterator<Item = f64>) {
        for v in values {
            self.sum += v;
        }
    }

    /// The sum so far divided by `denominator` (1 for `sum`).
    pub fn result(&self, denominator: f64) -> f64 {
        self.sum / denominator
    }
}

/// Output files under temporary names (`DIR/.NAME.partial`): removed when
/// dropped unless [`OutputFiles::commit`] renamed them into place.
#[derive(Debug, Default)]
pub struct OutputFiles {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl OutputFiles {
    /// The temporary path for `path`, registered for cleanup.
    pub fn temporary(&mut self, path: &Path) -> PathBuf {
        let tmp = crate::io::temporary_name(path);
        self.files.push((tmp.clone(), path.to_path_buf()));
        tmp
    }

    /// Renames every temporary into place.
    pub fn commit(mut self) -> Result<(), String> {
        for (tmp, path) in &self.files {
            std::fs::rename(tmp, path).map_err(|e| format!("--out {}: {e}", path.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputFiles {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                std::fs::remove_file(tmp).ok();
            }
        }
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`,
/// when the platform says.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `stat` a writable statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // The field types differ between platforms.
        Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// An error naming the need when `needed` bytes do not fit in `available`.
pub fn space_problem(dir: &Path, needed: u64, available: Option<u64>) -> Result<(), String> {
    match available {
        Some(free) if free < needed => Err(format!(
            "--out {}: the outputs need {needed} bytes ({:.2} GB) but the disk has {free} bytes ({:.2} GB) free",
            dir.display(),
            needed as f64 / 1e9,
            free as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rows_fit_the_budget() {
        // 1000 rows of 100 bytes, 10_000 free: 100 rows, multiple of 32 -> 96.
        assert_eq!(window_rows(1000, 100, 10_500, 500, 32), Ok(96));
        assert_eq!(window_rows(1000, 100, 10_500, 500, 1), Ok(100));
        // Everything fits: one window of every row, whatever the alignment.
        assert_eq!(window_rows(50, 100, 1 << 20, 0, 64), Ok(50));
        // Less than one aligned window: an error naming the budget and the need.
        let e = window_rows(1000, 100, 3000, 0, 32).expect_err("too small");
        assert!(
            e.contains("--memory-budget 3000") && e.contains("3200"),
            "{e}"
        );
    }

    #[test]
    fn space_problem_names_the_need() {
        let dir = Path::new("/out");
        assert!(space_problem(dir, 10, Some(100)).is_ok());
        assert!(space_problem(dir, 10, None).is_ok());
        let e = space_problem(dir, 5_000_000_000, Some(1_000)).expect_err("no room");
        assert!(e.contains("5000000000 bytes") && e.contains("/out"), "{e}");
    }

    #[test]
    fn available_bytes_reads_the_filesystem() {
        let free = available_bytes(&std::env::temp_dir());
        if cfg!(unix) {
            assert!(
                free.is_some_and(|b| b > 0),
                "statvfs on the temp dir: {free:?}"
            );
        }
    }

    #[test]
    fn fold_is_in_row_order() {
        let values: Vec<f64> = (0..1000).map(|i| 1.0 / f64::from(i + 1)).collect();
        let mut whole = RowFold::default();
        whole.add(values.iter().copied());
        let mut windows = RowFold::default();
        for w in values.chunks(7) {
            windows.add(w.iter().copied());
        }
        assert_eq!(whole.result(3.0).to_bits(), windows.result(3.0).to_bits());
    }
}
