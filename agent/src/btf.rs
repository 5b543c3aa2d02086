//! Just enough of the kernel's BTF to find struct member offsets, enum values
//! and the argument types of BTF tracepoints: what a CO-RE relocation would
//! resolve, for programs written in Rust, which has no CO-RE yet.
//!
//! Why not a crate: aya's `Btf` does not expose members; btfparse builds an
//! owned map of all ~130k types (100 ms, and 55 MiB of heap that glibc keeps
//! afterwards: a daemon that should sit at a few MiB); btf-rs is LGPL, which a
//! statically linked MIT/Apache binary cannot simply include. The format is
//! small and stable (include/uapi/linux/btf.h): one pass records where each
//! type starts, and lookups scan those.

use std::{collections::HashSet, fs, io, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
const HEADER_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;

// BTF kinds (BTF_KIND_*).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Nesting of anonymous structs and unions searched for a member.
const MAX_ANONYMOUS_DEPTH: u32 = 8;
/// Typedefs and qualifiers followed before giving up (a loop in bad BTF).
const MAX_INDIRECTIONS: u32 = 32;

/// The kernel's BTF could not be read or lacks what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error(
        "cannot read {path} ({source}); hostscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The data is not BTF this reader understands.
    #[error("malformed kernel BTF: {0}")]
    Malformed(&'static str),
    /// A kind newer than this reader: its size is unknown, so nothing after it can be read.
    #[error(
        "the kernel's BTF uses type kind {0}, which this hostscope does not know; upgrade hostscope"
    )]
    UnknownKind(u32),
    /// No type of that kind and name.
    #[error("the kernel's BTF has no {kind} `{name}`")]
    MissingType {
        /// `struct`, `typedef`, ...
        kind: &'static str,
        /// The name looked for.
        name: String,
    },
    /// The struct has no such member, even in its anonymous members.
    #[error("struct {strukt} in the kernel's BTF has no member `{member}`")]
    MissingMember {
        /// The struct.
        strukt: String,
        /// The member.
        member: String,
    },
    /// The member is a bitfield or not byte-aligned: it cannot be read as a whole.
    #[error("{strukt}.{member} is a bitfield in the kernel's BTF")]
    Bitfield {
        /// The struct.
        strukt: String,
        /// The member.
        member: String,
    },
    /// A type id points nowhere or has an unexpected shape.
    #[error("unexpected type in the kernel's BTF: {0}")]
    Unexpected(String),
}

/// A member found in a struct: where it is and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Its type id.
    pub type_id: u32,
}

/// The parsed header of one type.
#[derive(Debug, Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Where the kind-specific data after the header starts.
    extra: usize,
}

/// A BTF blob, indexed by type id.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset of each type's header, by type id; id 0 (void) has none.
    type_starts: Vec<usize>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.type_starts.len())
            .finish()
    }
}

impl Btf {
    /// The running kernel's BTF.
    #[cfg(test)]
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses a BTF blob in this machine's byte order.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("shorter than its header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (not BTF, or another byte order)",
            ));
        }
        let word = |at: usize| read_u32(&data, at).ok_or(BtfError::Malformed("truncated header"));
        // Version and flags, as the kernel checks them (btf_parse_hdr): a
        // blob with others is not one this reader understands.
        let [.., version, flags] = word(0)?.to_ne_bytes();
        if version != VERSION || flags != 0 {
            return Err(BtfError::Malformed("unknown version or flags"));
        }
        let header_len = word(4)? as usize;
        if header_len < HEADER_LEN {
            return Err(BtfError::Malformed("header too short"));
        }
        let section = |off: u32, len: u32| -> Result<std::ops::Range<usize>, BtfError> {
            let start = header_len
                .checked_add(off as usize)
                .ok_or(BtfError::Malformed("section offset overflows"))?;
            let end = start
                .checked_add(len as usize)
                .filter(|end| *end <= data.len())
                .ok_or(BtfError::Malformed("section past the end"))?;
            Ok(start..end)
        };
        let types = section(word(8)?, word(12)?)?;
        let strings = section(word(16)?, word(20)?)?;
        let apart = types.is_empty()
            || strings.is_empty()
            || types.end <= strings.start
            || strings.end <= types.start;
        if !apart {
            return Err(BtfError::Malformed("type and string sections overlap"));
        }

        let mut type_starts = vec![0];
        let mut at = types.start;
        while at < types.end {
            let header = type_header(&data, at)?;
            type_starts.push(at);
            at = header.extra + extra_len(&header)?;
        }
        if at != types.end {
            return Err(BtfError::Malformed("last type runs past the type section"));
        }
        Ok(Self {
            data,
            strings,
            type_starts,
        })
    }

    /// Number of types, void excluded.
    pub fn type_count(&self) -> usize {
        self.type_starts.len() - 1
    }

    fn header(&self, id: u32) -> Result<TypeHeader, BtfError> {
        let start = self
            .type_starts
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or_else(|| BtfError::Unexpected(format!("no type with id {id}")))?;
        type_header(&self.data, *start)
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let Some(start) = self.strings.start.checked_add(name_off as usize) else {
            return b"";
        };
        let tail = self.data.get(start..self.strings.end).unwrap_or_default();
        let len = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        &tail[..len]
    }

    /// The id of the first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.type_starts.len() as u32).find(|&id| {
            self.header(id)
                .is_ok_and(|h| h.kind == kind && self.name(h.name_off) == name.as_bytes())
        })
    }

    /// The u32 at `index` of a type's kind-specific data.
    fn extra_u32(&self, header: &TypeHeader, index: usize) -> Result<u32, BtfError> {
        read_u32(&self.data, header.extra + 4 * index)
            .ok_or(BtfError::Malformed("type data past the end"))
    }

    /// Follows typedefs and qualifiers to the type they name.
    pub fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_INDIRECTIONS {
            if id == 0 {
                return Ok(0);
            }
            let header = self.header(id)?;
            match header.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = header.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Unexpected(format!(
            "type {id}: too many typedefs or qualifiers"
        )))
    }

    /// The size in bytes of a type, through typedefs and qualifiers.
    pub fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        self.size_within(id, MAX_INDIRECTIONS)
    }

    /// [`Self::size_of`], through at most `depth` nested arrays (bad BTF
    /// can make an array its own element).
    fn size_within(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth == 0 {
            return Err(BtfError::Unexpected(format!(
                "type {id}: arrays nested too deep"
            )));
        }
        let id = self.resolve(id)?;
        if id == 0 {
            return Err(BtfError::Unexpected("void has no size".into()));
        }
        let header = self.header(id)?;
        match header.kind {
            KIND_INT | KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION | KIND_FLOAT => {
                Ok(header.size_or_type)
            }
            KIND_PTR => Ok(size_of::<usize>() as u32),
            KIND_ARRAY => {
                let element = self.extra_u32(&header, 0)?;
                let count = self.extra_u32(&header, 2)?;
                self.size_within(element, depth - 1)?
                    .checked_mul(count)
                    .ok_or_else(|| BtfError::Unexpected(format!("array {id} too large")))
            }
            kind => Err(BtfError::Unexpected(format!(
                "type {id} (kind {kind}) has no size"
            ))),
        }
    }

    /// If `id` is (a typedef of) a pointer to a struct, that struct's name.
    pub fn pointee_struct_name(&self, id: u32) -> Result<Option<String>, BtfError> {
        let id = self.resolve(id)?;
        if id == 0 || self.header(id)?.kind != KIND_PTR {
            return Ok(None);
        }
        let pointee = self.resolve(self.header(id)?.size_or_type)?;
        if pointee == 0 {
            return Ok(None);
        }
        let header = self.header(pointee)?;
        Ok((header.kind == KIND_STRUCT || header.kind == KIND_FWD)
            .then(|| String::from_utf8_lossy(self.name(header.name_off)).into_owned()))
    }

    /// Finds `member` in `struct strukt`, looking into anonymous struct and
    /// union members as C does; the offset is from the start of `strukt`.
    pub fn member(&self, strukt: &str, member: &str) -> Result<Member, BtfError> {
        let id = self
            .find(KIND_STRUCT, strukt)
            .ok_or_else(|| BtfError::MissingType {
                kind: "struct",
                name: strukt.to_owned(),
            })?;
        // Each anonymous type is searched once: bad BTF can nest one in
        // itself, or many times over, and a second search finds nothing new.
        let mut searched = HashSet::from([id]);
        match self.member_in(id, member, 0, &mut searched)? {
            Some((bit_offset, type_id)) if bit_offset % 8 == 0 => Ok(Member {
                offset: bit_offset / 8,
                type_id,
            }),
            Some(_) => Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            }),
            None => Err(BtfError::MissingMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    /// `(bit offset, type id)` of `name` in struct or union `id`.
    fn member_in(
        &self,
        id: u32,
        name: &str,
        depth: u32,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        let header = self.header(id)?;
        let mut anonymous = Vec::new();
        for index in 0..header.vlen {
            let name_off = self.extra_u32(&header, 3 * index)?;
            let type_id = self.extra_u32(&header, 3 * index + 1)?;
            let raw_offset = self.extra_u32(&header, 3 * index + 2)?;
            // With kind_flag, the top 8 bits are a bitfield size.
            let (bit_offset, bitfield) = if header.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = self.name(name_off);
            if member_name == name.as_bytes() {
                // A bitfield's offset is not a byte offset; report it unaligned.
                let offset = if bitfield == 0 {
                    bit_offset
                } else {
                    bit_offset | 1
                };
                return Ok(Some((offset, type_id)));
            }
            if member_name.is_empty() {
                anonymous.push((bit_offset, type_id));
            }
        }
        if depth >= MAX_ANONYMOUS_DEPTH {
            return Ok(None);
        }
        for (base, type_id) in anonymous {
            let inner = self.resolve(type_id)?;
            let kind = self.header(inner)?.kind;
            if (kind == KIND_STRUCT || kind == KIND_UNION)
                && searched.insert(inner)
                && let Some((offset, found)) = self.member_in(inner, name, depth + 1, searched)?
            {
                let offset = base.checked_add(offset).ok_or_else(|| {
                    BtfError::Unexpected(format!("struct {id}: `{name}` is past 4 Gbit"))
                })?;
                return Ok(Some((offset, found)));
            }
        }
        Ok(None)
    }

    /// The value of enumerator `value` of `enum name`, if both exist.
    pub fn enum_value(&self, name: &str, value: &str) -> Result<Option<i64>, BtfError> {
        let Some(id) = self.find(KIND_ENUM, name) else {
            return Ok(None);
        };
        let header = self.header(id)?;
        for index in 0..header.vlen {
            if self.name(self.extra_u32(&header, 2 * index)?) == value.as_bytes() {
                let raw = self.extra_u32(&header, 2 * index + 1)?;
                // kind_flag marks a signed enum.
                return Ok(Some(if header.kind_flag {
                    i64::from(raw as i32)
                } else {
                    i64::from(raw)
                }));
            }
        }
        Ok(None)
    }

    /// The argument types of BTF tracepoint `name`, without the leading
    /// `void *__data`: what `ctx.arg(0)`, `ctx.arg(1)`, ... hold.
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<u32>, BtfError> {
        let typedef_name = format!("btf_trace_{name}");
        let typedef = self
            .find(KIND_TYPEDEF, &typedef_name)
            .ok_or(BtfError::MissingType {
                kind: "typedef",
                name: typedef_name,
            })?;
        let pointer = self.resolve(typedef)?;
        let proto = match self.header(pointer)? {
            h if h.kind == KIND_PTR => self.resolve(h.size_or_type)?,
            _ => 0,
        };
        let header = self.header(proto)?;
        if header.kind != KIND_FUNC_PROTO || header.vlen == 0 {
            return Err(BtfError::Unexpected(format!(
                "btf_trace_{name} is not a pointer to a function prototype"
            )));
        }
        (1..header.vlen)
            .map(|index| self.extra_u32(&header, 2 * index + 1))
            .collect()
    }

    /// The name of a type, for messages (`struct request *`, `unsigned int`).
    pub fn type_name(&self, id: u32) -> String {
        self.type_name_within(id, MAX_INDIRECTIONS)
    }

    /// [`Self::type_name`], through at most `depth` pointers and qualifiers
    /// (bad BTF can make a pointer point to itself).
    fn type_name_within(&self, id: u32, depth: u32) -> String {
        if depth == 0 {
            return "…".into();
        }
        let Ok(header) = self.header(id) else {
            return if id == 0 { "void".into() } else { "?".into() };
        };
        let name = String::from_utf8_lossy(self.name(header.name_off)).into_owned();
        match header.kind {
            KIND_PTR => format!(
                "{} *",
                self.type_name_within(header.size_or_type, depth - 1)
            ),
            KIND_CONST => format!(
                "const {}",
                self.type_name_within(header.size_or_type, depth - 1)
            ),
            KIND_STRUCT => format!("struct {name}"),
            KIND_UNION => format!("union {name}"),
            KIND_ENUM | KIND_ENUM64 => format!("enum {name}"),
            _ => name,
        }
    }
}

/// Builds BTF blobs by hand: (kind, name, size_or_type, kind_flag, extra
/// words). For the unit tests and the fuzzers' seeds.
pub(crate) struct Builder {
    strings: Vec<u8>,
    types: Vec<u8>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            strings: vec![0],
            types: Vec::new(),
        }
    }

    pub(crate) fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    pub(crate) fn add(
        &mut self,
        kind: u32,
        name: &str,
        size_or_type: u32,
        flag: bool,
        extra: &[u32],
    ) {
        let vlen = match kind {
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => extra.len() / 3,
            KIND_ENUM | KIND_FUNC_PROTO => extra.len() / 2,
            _ => 0,
        } as u32;
        let name = self.string(name);
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        for w in [name, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
    }

    pub(crate) fn member(&mut self, name: &str, type_id: u32, bits: u32) -> [u32; 3] {
        [self.string(name), type_id, bits]
    }

    pub(crate) fn build(self) -> Vec<u8> {
        let mut out = Vec::new();
        let words = [
            u32::from(MAGIC) | u32::from(VERSION) << 16,
            HEADER_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ];
        for w in words {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A lookup by name: what the fuzzers ask of a blob, with names it holds.
#[derive(Debug)]
pub(crate) enum Query {
    /// [`Btf::member`]: struct, member.
    Member(String, String),
    /// [`Btf::enum_value`]: enum, enumerator.
    EnumValue(String, String),
    /// [`Btf::tracepoint_args`]: the tracepoint (its typedef without `btf_trace_`).
    TracepointArgs(String),
}

/// Longest name a query copies: kernel names are shorter (KSYM_NAME_LEN is
/// 512, and real ones are far below it), and copies of longer, unterminated
/// "names" would make the fuzzers' own allocations grow with the blob.
const MAX_QUERY_NAME: usize = 128;

impl Btf {
    /// Up to `limit` lookups with the names of this blob's types: each
    /// struct's first members and one it lacks (which searches every
    /// anonymous member), each enum's first values, each tracepoint typedef.
    pub(crate) fn queries(&self, limit: usize) -> Vec<Query> {
        const PER_TYPE: usize = 4;
        let name = |off: u32| {
            let name = self.name(off);
            String::from_utf8_lossy(&name[..name.len().min(MAX_QUERY_NAME)]).into_owned()
        };
        let mut queries = Vec::new();
        for id in 1..self.type_starts.len() as u32 {
            if queries.len() >= limit {
                break;
            }
            let Ok(header) = self.header(id) else {
                continue;
            };
            let type_name = name(header.name_off);
            if type_name.is_empty() {
                continue;
            }
            match header.kind {
                KIND_STRUCT => {
                    for index in 0..header.vlen.min(PER_TYPE) {
                        if let Ok(off) = self.extra_u32(&header, 3 * index) {
                            queries.push(Query::Member(type_name.clone(), name(off)));
                        }
                    }
                    queries.push(Query::Member(type_name, "no such member".into()));
                }
                KIND_ENUM => {
                    for index in 0..header.vlen.min(PER_TYPE) {
                        if let Ok(off) = self.extra_u32(&header, 2 * index) {
                            queries.push(Query::EnumValue(type_name.clone(), name(off)));
                        }
                    }
                }
                KIND_TYPEDEF => {
                    if let Some(tracepoint) = type_name.strip_prefix("btf_trace_") {
                        queries.push(Query::TracepointArgs(tracepoint.to_owned()));
                    }
                }
                _ => {}
            }
        }
        queries.truncate(limit);
        queries
    }
}

/// The first `types` types of a blob and the first `strings` bytes of its
/// strings, as a blob of their own (names cut off read as empty, ids past the
/// cut point nowhere): seeds for the fuzzers from the real kernel's BTF.
pub(crate) fn excerpt(blob: &[u8], types: usize, strings: usize) -> Result<Vec<u8>, BtfError> {
    let btf = Btf::parse(blob.to_vec())?;
    let word = |at: usize| read_u32(blob, at).ok_or(BtfError::Malformed("truncated header"));
    let type_start = word(4)? as usize + word(8)? as usize;
    let type_end = match btf.type_starts.get(types + 1) {
        Some(end) => *end,
        None => type_start + word(12)? as usize,
    };
    let string_end = btf.strings.end.min(btf.strings.start + strings);
    let cut = |range: std::ops::Range<usize>| {
        blob.get(range)
            .map(<[u8]>::to_vec)
            .ok_or(BtfError::Malformed("section past the end"))
    };
    Ok(Builder {
        strings: cut(btf.strings.start..string_end)?,
        types: cut(type_start..type_end)?,
    }
    .build())
}

/// Length of a type's kind-specific data, after its 12-byte header.
fn extra_len(header: &TypeHeader) -> Result<usize, BtfError> {
    Ok(match header.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * header.vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * header.vlen,
        unknown => return Err(BtfError::UnknownKind(unknown)),
    })
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn type_header(data: &[u8], at: usize) -> Result<TypeHeader, BtfError> {
    let word = |i: usize| read_u32(data, at + 4 * i).ok_or(BtfError::Malformed("truncated type"));
    let info = word(1)?;
    Ok(TypeHeader {
        name_off: word(0)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        size_or_type: word(2)?,
        extra: at + TYPE_HEADER_LEN,
    })
}

/// 1 int, 2 struct inner {a, b}, 3 union {inner; long}, 4 struct outer
/// {x; anonymous union at byte 8; bitfield}, 5 ptr to outer, 6 typedef
/// btf_trace_ev -> 7 ptr -> 8 proto (void *, outer *, int), 9 enum. The
/// unit tests' subject and the fuzzers' first seed.
pub(crate) fn sample_blob() -> Vec<u8> {
    let mut b = Builder::new();
    b.add(KIND_INT, "int", 4, false, &[32]);
    let m = [b.member("a", 1, 0), b.member("b", 1, 32)].concat();
    b.add(KIND_STRUCT, "inner", 8, false, &m);
    let m = [b.member("", 2, 0), b.member("l", 1, 0)].concat();
    b.add(KIND_UNION, "", 8, false, &m);
    let m = [
        b.member("x", 1, 0),
        b.member("", 3, 64),
        b.member("bits", 1, 3 << 24 | 128),
    ]
    .concat();
    b.add(KIND_STRUCT, "outer", 24, true, &m);
    b.add(KIND_PTR, "", 4, false, &[]);
    b.add(KIND_TYPEDEF, "btf_trace_ev", 7, false, &[]);
    b.add(KIND_PTR, "", 8, false, &[]);
    let params = [0, 0, 0, 5, 0, 1];
    b.add(KIND_FUNC_PROTO, "", 0, false, &params);
    let values = [b.string("ONE"), 1, b.string("MINUS"), u32::MAX];
    b.add(KIND_ENUM, "e", 4, true, &values);
    b.build()
}

/// One type of every kind this reader knows, tied together: a seed from
/// which the fuzzers reach every arm of the lookups. 1 long, 2 ptr -> 4,
/// 3 long[4], 4 struct s {arr; anonymous union 5; p}, 5 union {v; d},
/// 6 signed enum e, 7 fwd, 8 typedef s_t -> 9 const -> 10 volatile ->
/// 11 restrict -> 12 type tag -> 1, 13 proto long (struct s *, s_t), 14 func,
/// 15 double, 16 var, 17 datasec, 18 decl tag, 19 enum64, 20 typedef
/// btf_trace_all -> 21 ptr -> 13, 22 ptr -> 7.
pub(crate) fn every_kind_blob() -> Vec<u8> {
    let mut b = Builder::new();
    b.add(KIND_INT, "long", 8, false, &[64]);
    b.add(KIND_PTR, "", 4, false, &[]);
    b.add(KIND_ARRAY, "", 0, false, &[1, 1, 4]);
    let m = [
        b.member("arr", 3, 0),
        b.member("", 5, 256),
        b.member("p", 2, 320),
    ]
    .concat();
    b.add(KIND_STRUCT, "s", 48, false, &m);
    let m = [b.member("v", 10, 0), b.member("d", 15, 0)].concat();
    b.add(KIND_UNION, "", 8, false, &m);
    let values = [b.string("A"), 0, b.string("B"), u32::MAX];
    b.add(KIND_ENUM, "e", 4, true, &values);
    b.add(KIND_FWD, "later", 0, false, &[]);
    b.add(KIND_TYPEDEF, "s_t", 9, false, &[]);
    b.add(KIND_CONST, "", 10, false, &[]);
    b.add(KIND_VOLATILE, "", 11, false, &[]);
    b.add(KIND_RESTRICT, "", 12, false, &[]);
    b.add(KIND_TYPE_TAG, "user", 1, false, &[]);
    let params = [0, 2, b.string("x"), 8];
    b.add(KIND_FUNC_PROTO, "", 1, false, &params);
    b.add(KIND_FUNC, "f", 13, false, &[]);
    b.add(KIND_FLOAT, "double", 8, false, &[]);
    b.add(KIND_VAR, "v", 1, false, &[1]);
    b.add(KIND_DATASEC, ".data", 8, false, &[16, 0, 8]);
    b.add(KIND_DECL_TAG, "tag", 4, false, &[u32::MAX]);
    let values = [b.string("HUGE"), 0, 1];
    b.add(KIND_ENUM64, "big", 8, false, &values);
    b.add(KIND_TYPEDEF, "btf_trace_all", 21, false, &[]);
    b.add(KIND_PTR, "", 13, false, &[]);
    b.add(KIND_PTR, "", 7, false, &[]);
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Btf {
        Btf::parse(sample_blob()).expect("sample BTF parses")
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = sample();
        assert_eq!(btf.type_count(), 9);
        assert_eq!(btf.member("outer", "x").unwrap().offset, 0);
        // inner.b, via the anonymous union at byte 8: 8 + 4.
        let b = btf.member("outer", "b").unwrap();
        assert_eq!((b.offset, b.type_id), (12, 1));
        assert_eq!(btf.member("outer", "l").unwrap().offset, 8);
        assert!(matches!(
            btf.member("outer", "bits"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member("outer", "nope"),
            Err(BtfError::MissingMember { .. })
        ));
        assert!(matches!(
            btf.member("nope", "x"),
            Err(BtfError::MissingType { .. })
        ));
    }

    #[test]
    fn sizes_pointees_and_tracepoint_arguments() {
        let btf = sample();
        assert_eq!(btf.size_of(1).unwrap(), 4);
        assert_eq!(btf.size_of(4).unwrap(), 24);
        assert_eq!(btf.size_of(5).unwrap(), 8);
        assert_eq!(
            btf.pointee_struct_name(5).unwrap().as_deref(),
            Some("outer")
        );
        assert_eq!(btf.pointee_struct_name(1).unwrap(), None);
        assert_eq!(btf.tracepoint_args("ev").unwrap(), vec![5, 1]);
        assert_eq!(btf.type_name(5), "struct outer *");
        assert_eq!(btf.enum_value("e", "ONE").unwrap(), Some(1));
        assert_eq!(btf.enum_value("e", "MINUS").unwrap(), Some(-1));
        assert_eq!(btf.enum_value("e", "TWO").unwrap(), None);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(matches!(
            Btf::parse(vec![1, 2, 3]),
            Err(BtfError::Malformed(_))
        ));
        let mut b = Builder::new();
        b.add(25, "future", 0, false, &[]);
        assert!(matches!(
            Btf::parse(b.build()),
            Err(BtfError::UnknownKind(25))
        ));
        let mut truncated = sample().data;
        truncated.truncate(40);
        assert!(Btf::parse(truncated).is_err());
    }

    /// Bad BTF found by the fuzzer (fuzz/regressions/btf/ has the inputs):
    /// types that contain or point to themselves end in an error or a
    /// placeholder, not in endless recursion.
    #[test]
    fn cycles_in_bad_btf_end() {
        let mut b = Builder::new();
        b.add(KIND_PTR, "", 1, false, &[]);
        b.add(KIND_ARRAY, "", 0, false, &[2, 2, 2]);
        // 3: a struct with many anonymous members of its own type, 4 likewise
        // through an anonymous union.
        let m: Vec<u32> = (0..50).flat_map(|_| b.member("", 3, 0)).collect();
        b.add(KIND_STRUCT, "selfish", 8, false, &m);
        let m = [b.member("", 5, 0), b.member("", 5, 0)].concat();
        b.add(KIND_STRUCT, "outer", 8, false, &m);
        let m = [b.member("", 4, 0), b.member("", 5, 0)].concat();
        b.add(KIND_UNION, "", 8, false, &m);
        let btf = Btf::parse(b.build()).unwrap();
        assert!(btf.type_name(1).ends_with("* * *"));
        assert!(matches!(btf.size_of(2), Err(BtfError::Unexpected(_))));
        assert!(matches!(
            btf.member("selfish", "x"),
            Err(BtfError::MissingMember { .. })
        ));
        assert!(matches!(
            btf.member("outer", "x"),
            Err(BtfError::MissingMember { .. })
        ));
    }

    #[test]
    fn rejects_unknown_versions_flags_and_overlaps() {
        let good = sample_blob();
        for (at, byte) in [(2, 2), (3, 1)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert!(matches!(Btf::parse(bad), Err(BtfError::Malformed(_))));
        }
        // The string section starting inside the type section.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&4u32.to_ne_bytes());
        bad[20..24].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(Btf::parse(bad), Err(BtfError::Malformed(_))));
    }

    /// The running kernel's BTF parses in full and has the block layer's
    /// types (this kernel is the one the integration tests run on).
    #[test]
    fn reads_the_running_kernels_btf() {
        let btf = Btf::from_sys_fs().expect("this kernel has BTF");
        assert!(btf.type_count() > 10_000, "only {} types", btf.type_count());
        let q = btf.member("request", "q").expect("request.q");
        assert_eq!(
            btf.pointee_struct_name(q.type_id).unwrap().as_deref(),
            Some("request_queue")
        );
        let args = btf.tracepoint_args("block_rq_complete").unwrap();
        assert_eq!(btf.type_name(args[0]), "struct request *");
        assert_eq!(btf.enum_value("req_op", "REQ_OP_WRITE").unwrap(), Some(1));
    }
}
