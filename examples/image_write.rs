//! Drives `kiln::agent::image::write_image` from the command line, for tests/bench/image-write.sh.
//! Usage: image_write SOURCE TARGET [ALGORITHM:DIGEST]; prints one line with the rate.

use kiln::agent::image::{ImageSource, WriteOptions, write_image};
use kiln::model::ImageChecksum;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, target, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: image_write SOURCE TARGET [ALGORITHM:DIGEST]");
    };
    let expected = match rest.first().map(|s| s.split_once(':')) {
        Some(Some((algorithm, digest))) => Some(ImageChecksum {
            algorithm: algorithm.into(),
            digest: digest.into(),
        }),
        Some(None) => anyhow::bail!("the checksum must read ALGORITHM:DIGEST"),
        None => None,
    };
    let source = ImageSource::parse(source)?;
    let report = write_image(
        &source,
        target.as_ref(),
        expected.as_ref(),
        &WriteOptions::default(),
        |p| eprintln!("{} MiB, {:.0} MB/s", p.image_bytes >> 20, p.rate() / 1e6),
    )
    .await?;
    println!(
        "{:.3} s {:.1} MB/s image {} written {} skipped {} verified {}",
        report.elapsed.as_secs_f64(),
        report.rate() / 1e6,
        report.image_size,
        report.written,
        report.skipped,
        report.verified
    );
    Ok(())
}
