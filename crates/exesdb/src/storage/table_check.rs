//! Finds which table file is damaged. lsm-tree checks each block's checksum when it reads the
//! block, but its error does not say which file the block is in, and it reads data blocks only
//! when asked for them. This check reads table files itself, in lsm-tree 3.1's layout: a file
//! is a set of sections listed in a table of contents (TOC) whose checksum is in the file's
//! trailer; every section but `table_version` (one raw byte) is a run of blocks, each a header
//! (magic `LSM\x03`, block type, xxh3-128 of the block's data, data length, uncompressed
//! length, and the low 32 bits of the xxh3-128 of those 29 bytes) followed by the data. Any
//! byte of a table file but the version byte and the trailer's version and type bytes is
//! covered. The torn and corrupt storage tests fail if the layout changes.

use std::fs;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use crate::error::StartError;

const BLOCK_MAGIC: &[u8; 4] = b"LSM\x03";
const HEADER_LEN: usize = 33;
const HEADER_CHECKED_LEN: usize = 29;

/// Where in a table file the damage is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDamage {
    pub offset: usize,
    pub what: &'static str,
}

/// The file's trailer (lsm-tree 3.1, via `sfa`): `SFA!`, a version byte, a checksum type
/// byte, the xxh3-128 of the table of contents, its offset and its length (u64 LE each).
const TRAILER_LEN: usize = 4 + 1 + 1 + 16 + 8 + 8;
const TRAILER_MAGIC: &[u8; 4] = b"SFA!";
const TOC_MAGIC: &[u8; 4] = b"TOC!";
/// The one section that holds raw bytes rather than blocks.
const RAW_SECTION: &[u8] = b"table_version";

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn damage(offset: usize, what: &'static str) -> Option<TableDamage> {
    Some(TableDamage { offset, what })
}

/// Checks one table file's bytes: the trailer, the table of contents against its checksum,
/// and, section by section, that blocks follow each other exactly to the section's end, each
/// with a good header and data that matches its checksum.
pub(crate) fn check_table(bytes: &[u8]) -> Option<TableDamage> {
    let Some(trailer_at) = bytes.len().checked_sub(TRAILER_LEN) else {
        return damage(0, "the file is shorter than its trailer");
    };
    let trailer = &bytes[trailer_at..];
    if &trailer[..4] != TRAILER_MAGIC {
        return damage(trailer_at, "the trailer is damaged");
    }
    let (Some(toc_offset), Some(toc_length)) = (u64_at(trailer, 22), u64_at(trailer, 30)) else {
        return damage(trailer_at, "the trailer is damaged");
    };
    let toc = usize::try_from(toc_offset)
        .ok()
        .zip(usize::try_from(toc_length).ok())
        .and_then(|(offset, length)| bytes.get(offset..offset.checked_add(length)?));
    let Some(toc) = toc else {
        return damage(trailer_at, "the trailer points outside the file");
    };
    if xxh3_128(toc).to_le_bytes() != trailer[6..22] {
        return damage(
            toc_offset as usize,
            "the table of contents fails its checksum",
        );
    }
    if toc.get(..4) != Some(TOC_MAGIC.as_slice()) {
        return damage(toc_offset as usize, "the table of contents is damaged");
    }
    let count = u32::from_le_bytes(toc.get(4..8)?.try_into().ok()?);
    let mut at = 8;
    for _ in 0..count {
        let offset = usize::try_from(u64_at(toc, at)?).ok()?;
        let length = usize::try_from(u64_at(toc, at + 8)?).ok()?;
        let name_length = usize::from(u16::from_le_bytes(
            toc.get(at + 16..at + 18)?.try_into().ok()?,
        ));
        let name = toc.get(at + 18..at + 18 + name_length)?;
        at += 18 + name_length;
        if name == RAW_SECTION {
            continue;
        }
        if let Some(found) = check_blocks(bytes, offset, offset + length) {
            return Some(found);
        }
    }
    None
}

/// Checks that `bytes[start..end]` is a run of whole blocks.
fn check_blocks(bytes: &[u8], start: usize, end: usize) -> Option<TableDamage> {
    let mut offset = start;
    while offset < end {
        let Some(header) = bytes.get(offset..offset + HEADER_LEN) else {
            return damage(offset, "a block runs past the end of the file");
        };
        let stored = u32::from_le_bytes([header[29], header[30], header[31], header[32]]);
        // Only the low 32 bits are stored (truncation intended).
        if &header[..4] != BLOCK_MAGIC || xxh3_128(&header[..HEADER_CHECKED_LEN]) as u32 != stored {
            return damage(offset, "a block header fails its checksum");
        }
        let data_length = u32::from_le_bytes([header[21], header[22], header[23], header[24]]);
        let data_start = offset + HEADER_LEN;
        let data_end = data_start + data_length as usize;
        let Some(data) = bytes.get(data_start..data_end).filter(|_| data_end <= end) else {
            return damage(offset, "a block runs past the end of its section");
        };
        let mut checksum = [0u8; 16];
        checksum.copy_from_slice(&header[5..21]);
        if xxh3_128(data) != u128::from_le_bytes(checksum) {
            return damage(offset, "a block's data fails its checksum");
        }
        offset = data_end;
    }
    None
}

/// Every table file under the engine directory (`keyspaces/*/tables/*`).
fn table_files(engine_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(keyspaces) = fs::read_dir(engine_dir.join("keyspaces")) else {
        return files;
    };
    for keyspace in keyspaces.flatten() {
        if let Ok(tables) = fs::read_dir(keyspace.path().join("tables")) {
            files.extend(
                tables
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.is_file()),
            );
        }
    }
    files.sort();
    files
}

/// The first damaged table file found, with what is wrong in it.
pub fn find_damaged_table(engine_dir: &Path) -> Result<Option<(PathBuf, TableDamage)>, StartError> {
    for path in table_files(engine_dir) {
        let bytes = fs::read(&path).map_err(|source| StartError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(damage) = check_table(&bytes) {
            return Ok(Some((path, damage)));
        }
    }
    Ok(None)
}

/// The refusal for a damaged table file.
pub(crate) fn table_damaged(path: PathBuf, damage: &TableDamage) -> StartError {
    StartError::CorruptFile {
        path,
        detail: format!(
            "{} at byte {}. Refusing to start rather than serve a store with damaged data; \
             restore the data directory from a backup",
            damage.what, damage.offset
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(data: &[u8]) -> Vec<u8> {
        let mut header = Vec::new();
        header.extend_from_slice(BLOCK_MAGIC);
        header.push(0);
        header.extend_from_slice(&xxh3_128(data).to_le_bytes());
        header.extend_from_slice(&(data.len() as u32).to_le_bytes());
        header.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let checksum = xxh3_128(&header) as u32;
        header.extend_from_slice(&checksum.to_le_bytes());
        header.extend_from_slice(data);
        header
    }

    /// A table file as lsm-tree lays it out: sections, the TOC, the trailer.
    fn table(sections: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut file = Vec::new();
        let mut toc = TOC_MAGIC.to_vec();
        toc.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (name, bytes) in sections {
            toc.extend_from_slice(&(file.len() as u64).to_le_bytes());
            toc.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            toc.extend_from_slice(&(name.len() as u16).to_le_bytes());
            toc.extend_from_slice(name.as_bytes());
            file.extend_from_slice(bytes);
        }
        let toc_offset = file.len() as u64;
        file.extend_from_slice(&toc);
        file.extend_from_slice(TRAILER_MAGIC);
        file.extend_from_slice(&[1, 0]);
        file.extend_from_slice(&xxh3_128(&toc).to_le_bytes());
        file.extend_from_slice(&toc_offset.to_le_bytes());
        file.extend_from_slice(&(toc.len() as u64).to_le_bytes());
        file
    }

    #[test]
    fn a_whole_table_passes_and_damage_to_any_covered_byte_is_found() {
        let mut data = block(b"first block of data");
        data.extend(block(b"second, with LSM\x03 inside the data"));
        // The version byte follows the data section.
        let version_byte = data.len();
        let file = table(&[
            ("data", data),
            ("table_version", vec![3]),
            ("meta", block(b"meta")),
        ]);
        assert_eq!(check_table(&file), None);
        let trailer_at = file.len() - TRAILER_LEN;
        for offset in 0..file.len() {
            let uncovered =
                offset == version_byte || offset == trailer_at + 4 || offset == trailer_at + 5;
            let mut damaged = file.clone();
            damaged[offset] ^= 0x20;
            let found = check_table(&damaged);
            if !uncovered {
                assert!(found.is_some(), "flip at {offset} not found");
            }
        }
        assert!(
            check_table(&file[..file.len() - 1]).is_some(),
            "a cut file is damaged"
        );
    }
}
