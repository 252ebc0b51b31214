//! Optional compression of the snapshots sent to an object store
//! (`--snapshot-store-compression zstd[:LEVEL]`). What it saves depends on the data:
//! repeated keys and field names shrink, random values do not.
//!
//! A compressed snapshot is stored as `<name>.zst`, a plain zstd frame (`zstd -d` opens
//! it), and its checksum object covers those stored bytes, so a person checks an object
//! fetched by hand with `sha256sum -c` before opening it. Reading needs no flag: the object's name
//! says whether it is compressed, so changing the setting strands no snapshot.

use std::io::Write;

use zstd::stream::raw::Operation;

/// The name suffix of a zstd-compressed snapshot object.
pub const ZSTD_SUFFIX: &str = ".zst";
/// zstd's own default: about as fast as the upload, a third to a tenth of the size.
const DEFAULT_LEVEL: i32 = 3;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// `none`, `zstd` or `zstd:LEVEL` (1-19).
    pub fn parse(text: &str) -> Result<Compression, String> {
        match text.split_once(':') {
            None if text == "none" => Ok(Compression::None),
            None if text == "zstd" => Ok(Compression::Zstd {
                level: DEFAULT_LEVEL,
            }),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(level @ 1..=19) => Ok(Compression::Zstd { level }),
                _ => Err(format!("zstd level {level:?}: want 1 to 19")),
            },
            _ => Err(format!("{text:?}: want none, zstd or zstd:LEVEL")),
        }
    }

    /// The object a snapshot called `name` is stored as.
    pub fn object_name(self, name: &str) -> String {
        match self {
            Compression::None => name.to_owned(),
            Compression::Zstd { .. } => format!("{name}{ZSTD_SUFFIX}"),
        }
    }

    /// How a stored object called `object` was written, and the snapshot's own name.
    pub fn of_object(object: &str) -> (Compression, &str) {
        match object.strip_suffix(ZSTD_SUFFIX) {
            Some(name) => (
                Compression::Zstd {
                    level: DEFAULT_LEVEL,
                },
                name,
            ),
            None => (Compression::None, object),
        }
    }

    pub fn encoder(self) -> std::io::Result<Option<Encoder>> {
        match self {
            Compression::None => Ok(None),
            Compression::Zstd { level } => Ok(Some(Encoder(zstd::stream::write::Encoder::new(
                Vec::new(),
                level,
            )?))),
        }
    }

    pub fn decoder(self) -> std::io::Result<Option<Decoder>> {
        match self {
            Compression::None => Ok(None),
            Compression::Zstd { .. } => Ok(Some(Decoder {
                raw: zstd::stream::raw::Decoder::new()?,
                frame_done: false,
                drained: true,
            })),
        }
    }
}

/// Compresses a snapshot chunk by chunk. From milliseconds a chunk at the default level to
/// far more at 19: the upload runs it off the async runtime's threads.
pub struct Encoder(zstd::stream::write::Encoder<'static, Vec<u8>>);

impl Encoder {
    /// Compresses `chunk`; returns what is ready to store (often nothing yet).
    pub fn compress(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        self.0.write_all(chunk)?;
        Ok(std::mem::take(self.0.get_mut()))
    }

    /// Ends the frame; returns its last bytes.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.0.finish()
    }
}

/// Decompresses a downloaded object chunk by chunk, and knows whether its frame ended.
pub struct Decoder {
    raw: zstd::stream::raw::Decoder<'static>,
    frame_done: bool,
    /// The last step left nothing in zstd's output to flush.
    drained: bool,
}

/// At most this much comes out of one step, however compressible the input: an etcd db's
/// free pages expand many times over.
const OUT_STEP: usize = 256 << 10;

impl Decoder {
    /// One step over `input` (advanced past what it used): up to [`OUT_STEP`] snapshot
    /// bytes, or `None` once `input` is used up and all it gave is out. Call until `None`
    /// for every chunk.
    pub fn next_piece(&mut self, input: &mut &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        if input.is_empty() && self.drained {
            return Ok(None);
        }
        let mut buffer = vec![0u8; OUT_STEP];
        let status = self.raw.run_on_buffers(input, &mut buffer)?;
        *input = &input[status.bytes_read..];
        self.frame_done = status.remaining == 0;
        // Not called again on no input once the frame has ended: zstd would take that
        // for the start of the next frame.
        self.drained = status.bytes_written < buffer.len() || status.remaining == 0;
        if status.bytes_read == 0 && status.bytes_written == 0 && !input.is_empty() {
            return Err(std::io::Error::other("zstd made no progress"));
        }
        buffer.truncate(status.bytes_written);
        Ok(Some(buffer))
    }

    /// An error unless the input ended exactly at the end of a frame: an object cut short
    /// is not a snapshot.
    pub fn finish(self) -> std::io::Result<()> {
        if self.frame_done {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zstd frame is cut short",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_name_their_objects() {
        assert_eq!(Compression::parse("none"), Ok(Compression::None));
        assert_eq!(
            Compression::parse("zstd"),
            Ok(Compression::Zstd { level: 3 })
        );
        assert_eq!(
            Compression::parse("zstd:19"),
            Ok(Compression::Zstd { level: 19 })
        );
        for bad in ["zstd:0", "zstd:20", "zstd:x", "gzip", "", "zstd:"] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
        let zstd = Compression::Zstd { level: 3 };
        assert_eq!(zstd.object_name("snapshot-1.db"), "snapshot-1.db.zst");
        assert_eq!(
            Compression::None.object_name("snapshot-1.db"),
            "snapshot-1.db"
        );
        assert_eq!(
            Compression::of_object("snapshot-1.db.zst"),
            (zstd, "snapshot-1.db")
        );
        assert_eq!(
            Compression::of_object("snapshot-1.db"),
            (Compression::None, "snapshot-1.db")
        );
    }

    fn compressed(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut encoder = Compression::Zstd { level: 3 }.encoder().unwrap().unwrap();
        let mut out = Vec::new();
        for piece in data.chunks(chunk) {
            out.extend(encoder.compress(piece).unwrap());
        }
        out.extend(encoder.finish().unwrap());
        out
    }

    /// Decompressed as a download does it, `chunk` bytes at a time, and an empty chunk
    /// at the end (a stream may give one); checks no step gives more than OUT_STEP.
    fn decompressed(frame: &[u8], chunk: usize) -> std::io::Result<Vec<u8>> {
        let mut decoder = Compression::Zstd { level: 3 }.decoder()?.unwrap();
        let mut out = Vec::new();
        for mut input in frame.chunks(chunk).chain([&[][..]]) {
            while let Some(piece) = decoder.next_piece(&mut input)? {
                assert!(piece.len() <= OUT_STEP);
                out.extend(piece);
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn chunks_of_any_size_come_back_whole() {
        // Compressible runs and incompressible noise, a few MiB: one chunk expands past
        // the decoder's output step.
        let mut data: Vec<u8> = (0..3 << 20).map(|i| (i / 4096) as u8).collect();
        let mut x = 0x2545_f491_u32;
        data.extend((0..1 << 20).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        let frame = compressed(&data, 32 << 10);
        assert!(frame.len() < data.len() / 2, "{}", frame.len());
        assert_eq!(zstd::decode_all(&frame[..]).unwrap(), data);
        for chunk in [1 << 20, 8 << 10, 1000] {
            assert_eq!(decompressed(&frame, chunk).unwrap(), data, "{chunk}");
        }
        assert_eq!(decompressed(&compressed(b"", 10), 10).unwrap(), b"");
        // Output that ends exactly on a full step, in one chunk and in several.
        let exact = vec![7u8; 4 * OUT_STEP];
        for chunk in [1 << 20, 100] {
            assert_eq!(
                decompressed(&compressed(&exact, 4096), chunk).unwrap(),
                exact
            );
        }
    }

    #[test]
    fn a_frame_cut_short_or_garbled_is_an_error() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let frame = compressed(&data, 4096);
        let cut = decompressed(&frame[..frame.len() - 3], 4096).unwrap_err();
        assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof, "{cut}");
        assert!(decompressed(b"", 10).is_err());
        assert!(decompressed(b"not zstd at all", 10).is_err());
        let mut garbled = frame.clone();
        garbled[..4].copy_from_slice(b"XXXX");
        assert!(decompressed(&garbled, 4096).is_err());
    }
}
