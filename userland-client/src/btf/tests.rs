//! The reader and the resolver on BTF written here, type by type, from the
//! format's description (every kind, bitfields, malformed data).

use lang::resolver::{
    BaseEncoding, Function, Location, Resolver, TypeId, TypeInfo, TypeKind, VariableKind,
};

use super::resolver::BtfResolver;
use super::*;

/// Writes BTF: types in order (numbered from 1), strings deduplicated.
#[derive(Default)]
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

impl Writer {
    fn new() -> Self {
        Writer {
            strings: vec![0],
            ..Writer::default()
        }
    }

    fn string(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(text.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Adds a type: common part and extra words; returns its number.
    fn add(
        &mut self,
        name: &str,
        kind: u32,
        vlen: u32,
        kind_flag: bool,
        size_or_type: u32,
        extra: &[u32],
    ) -> u32 {
        let name = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for word in [name, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, name: &str, size: u32, encoding: u32) -> u32 {
        self.add(name, 1, 0, false, size, &[(encoding << 24) | (size * 8)])
    }

    fn members(&mut self, members: &[(&str, u32, u32)]) -> Vec<u32> {
        members
            .iter()
            .flat_map(|(name, ty, offset)| [self.string(name), *ty, *offset])
            .collect()
    }

    fn finish(&self) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&0xeb9fu16.to_le_bytes());
        data.push(1);
        data.push(0);
        for word in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&self.types);
        data.extend_from_slice(&self.strings);
        data
    }
}

/// A small kernel: every kind once, and functions with interesting parameters.
fn sample() -> (Vec<u8>, Ids) {
    let mut w = Writer::new();
    let int = w.int("int", 4, 1);
    let uint = w.int("unsigned int", 4, 0);
    let char_ = w.int("char", 1, 2 | 1);
    let bool_ = w.int("_Bool", 1, 4);
    let long = w.int("long", 8, 1);
    let float = w.add("double", 16, 0, false, 8, &[]);
    let const_char = w.add("", 10, 0, false, char_, &[]);
    let user_char = w.add("user", 18, 0, false, const_char, &[]);
    let user_ptr = w.add("", 2, 0, false, user_char, &[]);
    let fwd = w.add("task_struct", 7, 0, false, 0, &[]);
    let fwd_union = w.add("later", 7, 0, true, 0, &[]);
    // struct inner { int a; unsigned int flags:3, mode:5; char name[16]; } (24 bytes)
    let array = w.add("", 3, 0, false, 0, &[char_, int, 16]);
    let inner_members = w.members(&[
        ("a", int, 0),
        ("flags", uint, (3 << 24) | 32),
        ("mode", uint, (5 << 24) | 35),
        ("name", array, 64),
    ]);
    let inner = w.add("inner", 4, 4, true, 24, &inner_members);
    let inner_ptr = w.add("", 2, 0, false, inner, &[]);
    // struct outer { struct inner *in; union { long l; int i; }; } (16 bytes)
    let anon_members = w.members(&[("l", long, 0), ("i", int, 0)]);
    let anon = w.add("", 5, 2, false, 8, &anon_members);
    let outer_members = w.members(&[("in", inner_ptr, 0), ("", anon, 64)]);
    let outer = w.add("outer", 4, 2, false, 16, &outer_members);
    let outer_ptr = w.add("", 2, 0, false, outer, &[]);
    let volatile = w.add("", 9, 0, false, outer_ptr, &[]);
    let restrict = w.add("", 11, 0, false, volatile, &[]);
    let typedef = w.add("outer_t", 8, 0, false, outer, &[]);
    // enum color { RED = -1, GREEN = 7 } (signed), enum64 big { HUGE = 1 << 40 }
    let (red, green) = (w.string("RED"), w.string("GREEN"));
    let color = w.add("color", 6, 2, true, 4, &[red, (-1i32) as u32, green, 7]);
    let huge = w.string("HUGE");
    let big = w.add("big", 19, 1, false, 8, &[huge, 0, 1 << 8]);
    // long f(int dfd, const char __user *filename, struct outer *o, long a, long b,
    //        long c, long d)
    let params = [
        ("dfd", int),
        ("filename", user_ptr),
        ("o", outer_ptr),
        ("a", long),
        ("b", long),
        ("c", long),
        ("d", long),
    ];
    let words: Vec<u32> = params
        .iter()
        .flat_map(|(name, ty)| [w.string(name), *ty])
        .collect();
    let proto = w.add("", 13, params.len() as u32, false, long, &words);
    let func = w.add("seven", 12, 1, false, proto, &[]);
    // void by_value(struct outer o, int after); bool flag(double x, int y, ...)
    let words = [w.string("o"), outer, w.string("after"), int];
    let proto2 = w.add("", 13, 2, false, 0, &words);
    let by_value = w.add("by_value", 12, 0, false, proto2, &[]);
    let words = [w.string("x"), float, w.string("y"), int, 0, 0];
    let proto3 = w.add("", 13, 3, false, bool_, &words);
    w.add("flag", 12, 1, false, proto3, &[]);
    // Two static functions called `twin` with different parameters.
    let words = [w.string("x"), int];
    let proto4 = w.add("", 13, 1, false, 0, &words);
    w.add("twin", 12, 0, false, proto4, &[]);
    let words = [w.string("x"), long];
    let proto5 = w.add("", 13, 1, false, 0, &words);
    w.add("twin", 12, 0, false, proto5, &[]);
    let var = w.add("jiffies", 14, 0, false, long, &[1]);
    let datasec = w.add(".data", 15, 1, false, 8, &[var, 0, 8]);
    let tag = w.add("noinline", 17, 0, false, func, &[(-1i32) as u32]);
    (
        w.finish(),
        Ids {
            int,
            uint,
            char_,
            bool_,
            float,
            user_ptr,
            user_char,
            fwd,
            fwd_union,
            inner,
            inner_ptr,
            anon,
            outer,
            outer_ptr,
            volatile,
            restrict,
            typedef,
            color,
            big,
            func,
            by_value,
            var,
            datasec,
            tag,
        },
    )
}

struct Ids {
    int: u32,
    uint: u32,
    char_: u32,
    bool_: u32,
    float: u32,
    user_ptr: u32,
    user_char: u32,
    fwd: u32,
    fwd_union: u32,
    inner: u32,
    inner_ptr: u32,
    anon: u32,
    outer: u32,
    outer_ptr: u32,
    volatile: u32,
    restrict: u32,
    typedef: u32,
    color: u32,
    big: u32,
    func: u32,
    by_value: u32,
    var: u32,
    datasec: u32,
    tag: u32,
}

fn id(number: u32) -> TypeId {
    TypeId(u64::from(number))
}

#[test]
fn every_kind_is_read() {
    let (data, ids) = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(btf.len() as u32, ids.tag, "every type numbered");
    assert_eq!(btf.name(ids.inner), "inner");
    assert!(matches!(
        btf.get(ids.int).unwrap().kind,
        BtfKind::Int {
            size: 4,
            bits: 32,
            encoding: IntEncoding { signed: true, .. },
            ..
        }
    ));
    assert!(matches!(
        btf.get(ids.char_).unwrap().kind,
        BtfKind::Int {
            encoding: IntEncoding {
                char: true,
                signed: true,
                boolean: false
            },
            ..
        }
    ));
    assert_eq!(btf.get(ids.float).unwrap().kind, BtfKind::Float { size: 8 });
    assert_eq!(
        btf.get(ids.fwd_union).unwrap().kind,
        BtfKind::Forward { is_union: true }
    );
    let BtfKind::Struct { size, members } = &btf.get(ids.inner).unwrap().kind else {
        panic!("inner is a struct");
    };
    assert_eq!(*size, 24);
    assert_eq!(
        members
            .iter()
            .map(|m| (btf.string(m.name), m.bit_offset, m.bitfield_size))
            .collect::<Vec<_>>(),
        [
            ("a", 0, 0),
            ("flags", 32, 3),
            ("mode", 35, 5),
            ("name", 64, 0)
        ]
    );
    assert!(matches!(
        btf.get(ids.anon).unwrap().kind,
        BtfKind::Union { size: 8, .. }
    ));
    let BtfKind::Enum {
        enumerators,
        signed: true,
        is_64: false,
        size: 4,
    } = &btf.get(ids.color).unwrap().kind
    else {
        panic!("color is a signed enum");
    };
    assert_eq!(enumerators[0].value, -1);
    let BtfKind::Enum {
        enumerators,
        is_64: true,
        ..
    } = &btf.get(ids.big).unwrap().kind
    else {
        panic!("big is an enum64");
    };
    assert_eq!(enumerators[0].value, 1 << 40);
    assert!(matches!(
        btf.get(ids.func).unwrap().kind,
        BtfKind::Function { linkage: 1, .. }
    ));
    assert_eq!(
        btf.get(ids.var).unwrap().kind,
        BtfKind::Variable { ty: 5, linkage: 1 }
    );
    assert!(matches!(
        &btf.get(ids.datasec).unwrap().kind,
        BtfKind::DataSection { vars, .. } if vars[0].ty == ids.var && vars[0].size == 8
    ));
    assert_eq!(
        btf.get(ids.tag).unwrap().kind,
        BtfKind::DeclTag {
            target: ids.func,
            component: -1
        }
    );
    assert_eq!(btf.string(btf.get(ids.user_char).unwrap().name), "user");
    assert!(matches!(
        btf.get(ids.restrict).unwrap().kind,
        BtfKind::Restrict { target } if target == ids.volatile
    ));
    assert_eq!(btf.strip(ids.typedef), ids.outer);
    assert_eq!(btf.size_of(ids.typedef), Some(16));
    assert_eq!(btf.size_of(ids.restrict), Some(8));
    assert_eq!(btf.size_of(ids.fwd), None);
    assert_eq!(btf.functions("twin").count(), 2);
}

#[test]
fn types_answer_the_compiler() {
    let (data, ids) = sample();
    let btf = Btf::parse(&data).unwrap();
    let resolver = BtfResolver::new(&btf);
    assert_eq!(
        resolver.find_type(TypeKind::Struct, "inner"),
        Some(id(ids.inner))
    );
    assert_eq!(
        resolver.find_type(TypeKind::Struct, "task_struct"),
        Some(id(ids.fwd))
    );
    assert_eq!(resolver.find_type(TypeKind::Union, "inner"), None);
    assert_eq!(resolver.find_type(TypeKind::Enum, "big"), Some(id(ids.big)));
    assert_eq!(
        resolver.find_type(TypeKind::Named, "outer_t"),
        Some(id(ids.typedef))
    );
    assert_eq!(resolver.find_type(TypeKind::Named, "nothing"), None);
    let Some(TypeInfo::Struct(inner)) = resolver.type_info(id(ids.inner)) else {
        panic!("inner is a struct");
    };
    let layout: Vec<_> = inner
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.offset, m.bitfield))
        .collect();
    assert_eq!(
        layout,
        [
            ("a", 0, None),
            ("flags", 4, Some((0, 3))),
            ("mode", 4, Some((3, 5))),
            ("name", 8, None)
        ]
    );
    assert_eq!(
        resolver.type_info(id(ids.char_)),
        Some(TypeInfo::Base {
            name: "char".to_string(),
            size: 1,
            encoding: BaseEncoding::SignedChar
        })
    );
    assert!(matches!(
        resolver.type_info(id(ids.bool_)),
        Some(TypeInfo::Base {
            encoding: BaseEncoding::Boolean,
            ..
        })
    ));
    assert!(matches!(
        resolver.type_info(id(ids.uint)),
        Some(TypeInfo::Base {
            encoding: BaseEncoding::Unsigned,
            ..
        })
    ));
    assert!(matches!(
        resolver.type_info(id(ids.fwd)),
        Some(TypeInfo::Unsupported { .. })
    ));
    assert_eq!(
        resolver.type_info(id(ids.user_char)),
        Some(TypeInfo::Qualified {
            target: id(ids.user_char - 1)
        })
    );
    assert_eq!(resolver.type_info(TypeId(0)), Some(TypeInfo::Void));
    assert_eq!(resolver.type_info(TypeId(1 << 40)), None);
    assert_eq!(resolver.type_name(ids.user_ptr), "const char __user *");
    assert_eq!(resolver.type_name(ids.inner_ptr), "struct inner *");
    let Some(TypeInfo::Union(anon)) = resolver.type_info(id(ids.anon)) else {
        panic!("a union");
    };
    assert_eq!(anon.name, "");
    assert_eq!(anon.size, 8);
    assert!(matches!(
        resolver.type_info(id(ids.outer_ptr)),
        Some(TypeInfo::Pointer { target }) if target == id(ids.outer)
    ));
}

fn function(resolver: &BtfResolver<'_>, name: &str) -> Function {
    let mut found = resolver.functions(name);
    assert_eq!(found.len(), 1, "{name}");
    found.remove(0)
}

#[test]
fn parameters_are_in_argument_registers_at_the_entry() {
    let (data, ids) = sample();
    let btf = Btf::parse(&data).unwrap();
    let resolver = BtfResolver::new(&btf);
    let seven = function(&resolver, "seven");
    assert_eq!(seven.return_type, Some(id(5)));
    let variables = resolver.variables(&seven, seven.entry).unwrap();
    let locations: Vec<_> = variables
        .iter()
        .map(|v| (v.name.as_str(), v.location.clone()))
        .collect();
    // rdi rsi rdx rcx r8 r9 as DWARF numbers, then the stack.
    assert_eq!(
        &locations[..6],
        [
            ("dfd", Location::Register(5)),
            ("filename", Location::Register(4)),
            ("o", Location::Register(1)),
            ("a", Location::Register(2)),
            ("b", Location::Register(8)),
            ("c", Location::Register(9)),
        ]
    );
    assert!(
        matches!(&locations[6], ("d", Location::Unavailable(reason)) if reason.contains("stack"))
    );
    assert!(variables.iter().all(|v| v.kind == VariableKind::Parameter));
    assert_eq!(variables[1].ty, id(ids.user_ptr));
    // Past the entry, nothing is known.
    let later = resolver.variables(&seven, seven.entry + 4).unwrap();
    assert!(
        later
            .iter()
            .all(|v| matches!(&v.location, Location::Unavailable(r) if r.contains("entry")))
    );
}

#[test]
fn parameters_not_modelled_are_unavailable_with_everything_after_them() {
    let (data, ids) = sample();
    let btf = Btf::parse(&data).unwrap();
    let resolver = BtfResolver::new(&btf);
    let by_value = function(&resolver, "by_value");
    assert_eq!(by_value.return_type, None);
    let variables = resolver.variables(&by_value, 0).unwrap();
    assert!(
        matches!(&variables[0].location, Location::Unavailable(r) if r.contains("16-byte `struct outer`"))
    );
    assert!(
        matches!(&variables[1].location, Location::Unavailable(r) if r.contains("follows parameter `o`"))
    );
    let flag = function(&resolver, "flag");
    let variables = resolver.variables(&flag, 0).unwrap();
    assert_eq!(variables.len(), 2, "the `...` is not a parameter");
    assert!(
        matches!(&variables[0].location, Location::Unavailable(r) if r.contains("floating-point"))
    );
    let twin = function(&resolver, "twin");
    let error = resolver.variables(&twin, 0).unwrap_err();
    assert!(error.message.contains("different parameters"), "{error:?}");
    assert!(resolver.functions("nothing").is_empty());
    assert_eq!(resolver.functions("by_*").len(), 1);
    let _ = ids.by_value;
    assert!(resolver.kernel_symbols());
}

#[test]
fn malformed_btf_is_an_error() {
    let (data, _) = sample();
    assert_eq!(
        Btf::parse(&[]).unwrap_err(),
        BtfError::Truncated("no header".to_string())
    );
    let mut swapped = data.clone();
    swapped.swap(0, 1);
    assert_eq!(Btf::parse(&swapped).unwrap_err(), BtfError::BigEndian);
    let mut magic = data.clone();
    magic[0] = 0;
    assert!(matches!(Btf::parse(&magic), Err(BtfError::Magic(_))));
    let mut version = data.clone();
    version[2] = 2;
    assert_eq!(Btf::parse(&version).unwrap_err(), BtfError::Version(2));
    // A string section past the end.
    let mut strings = data.clone();
    strings[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Btf::parse(&strings), Err(BtfError::Truncated(_))));
    // A type whose members run past the type section.
    let mut w = Writer::new();
    w.add("s", 4, 3, false, 4, &[0, 0, 0]);
    assert!(matches!(
        Btf::parse(&w.finish()),
        Err(BtfError::Truncated(_))
    ));
    // An unknown kind.
    let mut w = Writer::new();
    w.int("int", 4, 1);
    w.add("x", 30, 0, false, 0, &[]);
    assert_eq!(
        Btf::parse(&w.finish()).unwrap_err(),
        BtfError::UnknownKind { id: 2, kind: 30 }
    );
    // Every prefix of valid BTF is refused or read, never a panic.
    for end in 0..data.len() {
        let _ = Btf::parse(&data[..end]);
    }
}

#[test]
fn build_ids_are_found_among_notes() {
    let mut notes = Vec::new();
    // A Xen note first, then the GNU build-id.
    for (name, kind, desc) in [
        (&b"Xen\0"[..], 6u32, &b"linux\0"[..]),
        (&b"GNU\0"[..], 3, &[0xab, 0xcd, 0xef][..]),
    ] {
        notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        notes.extend_from_slice(&kind.to_le_bytes());
        notes.extend_from_slice(name);
        notes.extend_from_slice(desc);
        notes.resize(notes.len().next_multiple_of(4), 0);
    }
    assert_eq!(source::gnu_build_id(&notes), Some(vec![0xab, 0xcd, 0xef]));
    assert_eq!(source::gnu_build_id(&notes[..20]), None);
}

#[test]
fn files_are_recognised_by_their_first_bytes() {
    let (data, _) = sample();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.btf");
    std::fs::write(&raw, &data).unwrap();
    let kernel = source::KernelBtf::open(&raw).unwrap();
    assert_eq!(kernel.build_id, None);
    assert!(
        kernel.check_build_id(&[1, 2, 3]).is_ok(),
        "nothing to check"
    );
    let other = dir.path().join("other");
    std::fs::write(&other, b"hello").unwrap();
    let error = source::KernelBtf::open(&other).unwrap_err().to_string();
    assert!(error.contains("neither BTF"), "{error}");
    let error = source::KernelBtf::open(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("cannot read"), "{error}");
}
