//! `vault-agent gen-data`: the reference's test-data generator. A total
//! size spread over files of random content (not sparse) in 10 to 50 random
//! sub-directories, each file between a lower and an upper size.

use std::io::Write;
use std::path::Path;

use rand::{Rng, RngCore};

#[derive(Debug)]
pub struct GenReport {
    pub files: usize,
    pub directories: usize,
    pub bytes: u64,
}

pub fn generate(target: &Path, total: u64, min: u64, max: u64) -> std::io::Result<GenReport> {
    if min == 0 || min > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("file sizes must satisfy 0 < min <= max (min {min}, max {max})"),
        ));
    }
    let mut rng = rand::rng();
    let dirs: Vec<String> = (0..rng.random_range(10..=50))
        .map(|i| format!("dir-{i:02}-{:08x}", rng.next_u32()))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(target.join(d))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let (mut written, mut files) = (0u64, 0usize);
    while written < total {
        let size = rng.random_range(min..=max).min(total - written).max(1);
        let path = target
            .join(&dirs[rng.random_range(0..dirs.len())])
            .join(format!("file-{files:07}-{:08x}.bin", rng.next_u32()));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        out.flush()?;
        written += size;
        files += 1;
    }
    Ok(GenReport {
        files,
        directories: dirs.len(),
        bytes: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_the_total_over_random_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let r = generate(dir.path(), 300_000, 1000, 20_000).unwrap();
        assert_eq!(r.bytes, 300_000);
        assert!((10..=50).contains(&r.directories));
        let mut total = 0;
        let mut count = 0;
        for e in walkdir::WalkDir::new(dir.path())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
        {
            let len = e.metadata().unwrap().len();
            assert!(len <= 20_000);
            total += len;
            count += 1;
        }
        assert_eq!((total, count), (300_000, r.files));
        assert!(generate(dir.path(), 10, 5, 1).is_err());
    }
}
