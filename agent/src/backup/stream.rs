//! Moving a backup's bytes: a stream (a command's standard output in a member's container)
//! compressed with multi-threaded zstd and uploaded as one object in parts, its size and
//! sha256 computed on the way. Nothing is written to local disk; memory holds at most a few
//! parts (`PART` each).

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use mofang_common::repo::Repo;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Size of one uploaded part (S3 wants at least 5 MiB but for the last).
const PART: usize = 8 << 20;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Why a stream could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed (the container died, the runtime failed).
    #[error("reading the backup stream: {0}")]
    Source(String),
    /// The repository refused or failed a write.
    #[error("writing {object} to the repository: {source}")]
    Store {
        /// The object's path.
        object: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },
    /// The compressor failed.
    #[error("zstd: {0}")]
    Compress(#[source] std::io::Error),
}

/// Result of streaming.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zstd {
    /// zstd level (3 is zstd's default).
    pub level: i32,
    /// Worker threads (0: single-threaded).
    pub threads: u32,
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// Path of the object in the repository.
    pub path: String,
    /// Bytes stored (compressed).
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes read from the source (before compression).
    pub source_bytes: u64,
}

/// Stores `input` as `rel` in `repo`, compressed with `zstd` if given. On any failure the
/// multipart upload is aborted: no partial object is left. `progress` is told the source
/// bytes read so far.
pub async fn store<E: std::fmt::Display>(
    repo: &Repo,
    rel: &str,
    input: BoxStream<'_, Result<Bytes, E>>,
    zstd: Option<Zstd>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Stored> {
    let path = repo.path(rel);
    let object = path.to_string();
    let store_err = |source| Error::Store {
        object: object.clone(),
        source,
    };
    // The upload is created once the source has produced its first bytes: a command that
    // fails at once leaves nothing in the store, not even an upload to abort.
    let mut input = input.peekable();
    match std::pin::Pin::new(&mut input).peek().await {
        Some(Ok(first)) => progress(first.len() as u64),
        Some(Err(e)) => return Err(Error::Source(e.to_string())),
        None => {}
    }
    let upload = repo.store.put_multipart(&path).await.map_err(store_err)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut encoder = match zstd {
        Some(z) => {
            let mut e =
                zstd::stream::write::Encoder::new(Vec::new(), z.level).map_err(Error::Compress)?;
            if z.threads > 0 {
                e.multithread(z.threads).map_err(Error::Compress)?;
            }
            Some(e)
        }
        None => None,
    };
    let mut hash = Sha256::new();
    let (mut size, mut source_bytes) = (0u64, 0u64);
    let result: Result<()> = async {
        while let Some(chunk) = input.next().await {
            let chunk = chunk.map_err(|e| Error::Source(e.to_string()))?;
            source_bytes += chunk.len() as u64;
            let out: Vec<u8> = match encoder.as_mut() {
                Some(e) => {
                    e.write_all(&chunk).map_err(Error::Compress)?;
                    std::mem::take(e.get_mut())
                }
                None => chunk.to_vec(),
            };
            if !out.is_empty() {
                hash.update(&out);
                size += out.len() as u64;
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(store_err)?;
                w.write(&out);
            }
            progress(source_bytes);
        }
        if let Some(e) = encoder.take() {
            let tail = e.finish().map_err(Error::Compress)?;
            hash.update(&tail);
            size += tail.len() as u64;
            w.write(&tail);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = w.abort().await;
        return Err(e);
    }
    w.finish().await.map_err(store_err)?;
    Ok(Stored {
        path: object,
        size,
        sha256: hex::encode(hash.finalize()),
        source_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::repo::RepoSpec;

    fn repo(dir: &std::path::Path) -> Repo {
        RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
        }
        .open()
        .unwrap()
    }

    /// 20 MiB in odd chunks, compressed on 2 threads: the object decompresses to the input,
    /// its size and sha256 are those of the stored bytes; a failing source leaves nothing.
    #[tokio::test]
    async fn compressed_object_round_trips_and_a_failed_source_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let data: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let chunks: Vec<Result<Bytes, String>> = data
            .chunks(1_000_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let stored = store(
            &repo,
            "b1/data.zst",
            futures::stream::iter(chunks).boxed(),
            Some(Zstd {
                level: 3,
                threads: 2,
            }),
            &|n| seen.store(n, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .unwrap();
        assert_eq!(stored.source_bytes, data.len() as u64);
        assert_eq!(seen.into_inner(), data.len() as u64);
        let on_disk = std::fs::read(dir.path().join("b1/data.zst")).unwrap();
        assert_eq!(on_disk.len() as u64, stored.size);
        assert!(stored.size < stored.source_bytes / 2, "compressed");
        assert_eq!(hex::encode(Sha256::digest(&on_disk)), stored.sha256);
        assert_eq!(zstd::decode_all(&on_disk[..]).unwrap(), data);

        let failing: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from(vec![1u8; 9 << 20])),
            Err("container died".into()),
        ];
        let e = store(
            &repo,
            "b2/data.zst",
            futures::stream::iter(failing).boxed(),
            None,
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("container died"), "{e}");
        assert!(!dir.path().join("b2/data.zst").exists());
    }
}
