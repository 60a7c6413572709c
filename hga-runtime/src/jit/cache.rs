//! The on-disk cache: one file per entry, `HGACUBIN1\n`, the log's length (u64 LE), the log, the CUBIN.
//! Written to a unique temporary name in the same directory and renamed into place (atomic on POSIX),
//! so concurrent writers of one entry both succeed and readers see whole files only.

use super::JitError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"HGACUBIN1\n";

/// `$HGA_CACHE_DIR` if set (and non-empty), else `<user cache dir>/hga/jit`.
pub fn cache_dir_from_env() -> Result<PathBuf, JitError> {
    match std::env::var_os("HGA_CACHE_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => dirs::cache_dir().map(|d| d.join("hga").join("jit")).ok_or(JitError::NoCacheDir),
    }
}

/// Reads an entry; `None` if absent or malformed (then it is simply rebuilt).
pub(super) fn read(path: &Path) -> Option<(PathBuf, String, Vec<u8>)> {
    let bytes = fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC)?;
    let n = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
    let log = String::from_utf8(rest.get(8..8 + n)?.to_vec()).ok()?;
    let cubin = rest.get(8 + n..)?.to_vec();
    (!cubin.is_empty()).then(|| (path.to_path_buf(), log, cubin))
}

/// The newest readable entry whose name starts with `prefix` (any NVRTC version).
pub(super) fn find_any(dir: &Path, prefix: &str) -> Option<(PathBuf, String, Vec<u8>)> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".hgacubin")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.into_iter().rev().find_map(|(_, p)| read(&p))
}

/// Writes an entry atomically.
fn io(p: &Path) -> impl Fn(std::io::Error) -> JitError + '_ {
    move |source| JitError::Cache { path: p.to_path_buf(), source }
}

pub(super) fn write(dir: &Path, path: &Path, log: &str, cubin: &[u8]) -> Result<(), JitError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(
        ".{}.{}.{nanos}.tmp",
        path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    let body = [MAGIC, &(log.len() as u64).to_le_bytes(), log.as_bytes(), cubin].concat();
    f.write_all(&body).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}
