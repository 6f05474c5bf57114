//! The agent's image writer end to end: a sparse 64 MiB image, zstd-compressed, served by a tiny
//! axum server on loopback, written to a file (and to a loop device) and compared byte for byte.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use kiln::agent::image::{ImageError, ImageSource, Progress, WriteOptions, write_image};
use kiln::model::ImageChecksum;
use rand::{RngCore, SeedableRng};
use sha2::Digest;

const MIB: usize = 1 << 20;
const IMAGE_SIZE: usize = 64 * MIB;

/// 64 MiB of zeros with random data at a few offsets, some unaligned, ending in zeros.
fn sparse_image() -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut image = vec![0u8; IMAGE_SIZE];
    for (at, len) in [
        (0, MIB),
        (10 * MIB + 123, 3 * MIB),
        (40 * MIB, 2 * MIB),
        (50 * MIB - 7, 4096),
    ] {
        rng.fill_bytes(&mut image[at..at + len]);
    }
    image
}

fn sha256(data: &[u8]) -> ImageChecksum {
    let digest = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ImageChecksum {
        algorithm: "sha256".into(),
        digest,
    }
}

/// Serves `files` by name from memory on 127.0.0.1, port 0; anything else is a 404.
async fn serve(files: Vec<(&'static str, Vec<u8>)>) -> SocketAddr {
    let files: Arc<Vec<(&'static str, Bytes)>> = Arc::new(
        files
            .into_iter()
            .map(|(name, data)| (name, Bytes::from(data)))
            .collect(),
    );
    let app = axum::Router::new()
        .route(
            "/{name}",
            axum::routing::get(
                |State(files): State<Arc<Vec<(&'static str, Bytes)>>>,
                 UrlPath(name): UrlPath<String>| async move {
                    match files.iter().find(|(n, _)| *n == name) {
                        Some((_, data)) => Ok(data.clone()),
                        None => Err(StatusCode::NOT_FOUND),
                    }
                },
            ),
        )
        .with_state(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn source(addr: SocketAddr, name: &str) -> ImageSource {
    ImageSource::parse(&format!("http://{addr}/{name}")).unwrap()
}

fn small_steps() -> WriteOptions {
    WriteOptions {
        progress_bytes: MIB as u64,
        ..WriteOptions::default()
    }
}

#[tokio::test]
async fn compressed_image_over_http_is_written_sparse_and_verified() {
    let image = sparse_image();
    let packed = zstd::encode_all(&image[..], 3).unwrap();
    let expected = sha256(&packed);
    let addr = serve(vec![("os.raw.zst", packed.clone())]).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.raw");

    let mut seen = Vec::new();
    let report = write_image(
        &source(addr, "os.raw.zst"),
        &target,
        Some(&expected),
        &small_steps(),
        |p| seen.push(p.clone()),
    )
    .await
    .unwrap();

    assert_eq!(std::fs::read(&target).unwrap(), image, "byte-identical");
    let meta = std::fs::metadata(&target).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert_eq!(meta.len(), IMAGE_SIZE as u64);
    assert!(
        allocated < 16 * MIB as u64,
        "sparse: {allocated} bytes allocated"
    );
    assert!(report.verified && report.compressed);
    assert_eq!(report.digest, expected);
    assert_eq!(
        (report.downloaded, report.image_size),
        (packed.len() as u64, IMAGE_SIZE as u64)
    );
    assert_eq!(report.written + report.skipped, IMAGE_SIZE as u64);
    assert!(report.skipped > 48 * MIB as u64, "{report:?}");

    assert!(seen.len() >= 3, "progress called {} times", seen.len());
    for pair in seen.windows(2) {
        let (a, b): (&Progress, &Progress) = (&pair[0], &pair[1]);
        assert!(
            b.downloaded >= a.downloaded && b.image_bytes >= a.image_bytes,
            "{a:?} then {b:?}"
        );
        assert!(b.elapsed >= a.elapsed);
    }
    assert!(seen[0].downloaded < seen[seen.len() - 1].downloaded);
    let last = &seen[seen.len() - 1];
    assert_eq!(
        (last.image_bytes, last.percent()),
        (IMAGE_SIZE as u64, Some(100.0))
    );
    assert!(last.rate() > 0.0);
}

#[tokio::test]
async fn a_wrong_checksum_names_both_digests() {
    let image = sparse_image();
    let packed = zstd::encode_all(&image[..], 1).unwrap();
    let actual = sha256(&packed);
    let addr = serve(vec![("os.raw.zst", packed)]).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = ImageChecksum {
        algorithm: "sha256".into(),
        digest: "ab".repeat(32),
    };

    let err = write_image(
        &source(addr, "os.raw.zst"),
        &dir.path().join("d"),
        Some(&wrong),
        &WriteOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }));
    assert_eq!(
        err.to_string(),
        format!("checksum mismatch: expected {wrong}, got {actual}")
    );
}

#[tokio::test]
async fn http_errors_are_clear() {
    let addr = serve(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = write_image(
        &source(addr, "missing.raw"),
        &dir.path().join("d"),
        None,
        &WriteOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::HttpStatus { status, .. } if status == 404));
    assert_eq!(
        err.to_string(),
        format!("http://{addr}/missing.raw answered HTTP 404 Not Found")
    );

    let md5 = ImageChecksum {
        algorithm: "md5".into(),
        digest: "0".repeat(32),
    };
    let err = write_image(
        &source(addr, "x"),
        &dir.path().join("d"),
        Some(&md5),
        &WriteOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedAlgorithm(_)), "{err}");
}

#[tokio::test]
async fn a_truncated_zstd_download_fails() {
    let packed = zstd::encode_all(&sparse_image()[..], 1).unwrap();
    let cut = packed[..packed.len() / 2].to_vec();
    let addr = serve(vec![("os.raw.zst", cut)]).await;
    let dir = tempfile::tempdir().unwrap();
    let err = write_image(
        &source(addr, "os.raw.zst"),
        &dir.path().join("d"),
        None,
        &WriteOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
}

/// Raw images work over HTTP and from a file; an existing target with old data is replaced.
#[tokio::test]
async fn raw_sources_work_and_old_data_does_not_survive() {
    let image = sparse_image();
    let expected = sha256(&image);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("os.raw");
    std::fs::write(&file, &image).unwrap();
    let addr = serve(vec![("os.raw", image.clone())]).await;

    for source in [source(addr, "os.raw"), ImageSource::File(file.clone())] {
        let target = dir.path().join("disk");
        std::fs::write(&target, vec![0xEEu8; IMAGE_SIZE + MIB]).unwrap();
        let report = write_image(&source, &target, Some(&expected), &small_steps(), |_| {})
            .await
            .unwrap();
        assert!(!report.compressed && report.verified, "{report:?}");
        assert!(
            std::fs::read(&target).unwrap() == image,
            "{source}: contents differ"
        );
    }
}

/// Detaches the loop device and removes its backing file on drop.
struct Loop(String, PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn attach(backing: &Path) -> Loop {
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Loop(
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        backing.to_path_buf(),
    )
}

/// On a block device the skipped zero ranges must be zeroed, not left with what was there.
#[tokio::test]
async fn on_a_block_device_skipped_ranges_read_back_as_zero() {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("no loop devices here: this test needs /dev/loop-control and root");
        return;
    }
    let image = sparse_image();
    let packed = zstd::encode_all(&image[..], 1).unwrap();
    let addr = serve(vec![("os.raw.zst", packed)]).await;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::write(&backing, vec![0xA5u8; IMAGE_SIZE + 4 * MIB]).unwrap();
    let device = attach(&backing);

    let report = write_image(
        &source(addr, "os.raw.zst"),
        Path::new(&device.0),
        None,
        &WriteOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.skipped > 48 * MIB as u64, "{report:?}");
    let back = std::fs::read(&device.0).unwrap();
    assert!(
        back[..IMAGE_SIZE] == image[..],
        "device contents differ from the image"
    );
    assert!(
        back[IMAGE_SIZE..].iter().all(|b| *b == 0xA5),
        "past the image is left alone"
    );
}
