//! The kernel's static marker table read from its image, without a running kernel:
//! what `probeport check` compiles marker probes against, and what `probeport run`
//! compiles against before it connects.
//!
//! # Design
//!
//! `kernel_stub::marker!` puts one `kernel_stub::platform::MarkerSite` static per
//! marker in the ELF section `probeport_markers`; the kernel's linker script keeps
//! that section as one array, and its table (`DescribeMarker`) is that array in
//! link order, so a marker's index is its position in the section. [`read`] walks
//! the section's initial contents: each site's `name: &str` and
//! `args: &[(&str, ArgType)]` point into `.rodata`, which the image holds too.
//!
//! Rust does not fix the layout of these types, so every size, member offset and
//! discriminant comes from the image's DWARF: `MarkerSite` by its path, then its
//! members' types (`&str` and the slice are `{ data_ptr, length }` structures, the
//! slice's element is the tuple with members `__0` and `__1`, and `__1` is the
//! `ArgType` enumeration). Only the enumerators' names are assumed: they are the
//! variants of `probe_port_protocol::message::ArgType`, shared by both sides.
//!
//! # Invariants
//!
//! - An image without the section has no markers (an empty table, not an error).
//! - Nothing in the image is trusted: a pointer outside the image, a name that is
//!   not UTF-8 or an unknown discriminant is an [`Error`], never a panic.

use lang::resolver::{Marker, MarkerArg};
use probe_port_protocol::message::ArgType;

use crate::debuginfo::{Kernel, Type, TypeId, TypeKind};

/// The ELF section `kernel_stub::marker!` puts its sites in.
pub const SECTION: &str = "probeport_markers";

/// The path of the marker site type in the kernel's DWARF.
pub const SITE_TYPE: &str = "kernel_stub::platform::MarkerSite";

/// Arguments a marker can have at most (`kernel_stub::MAX_MARKER_ARGS`); a longer
/// slice means the table was misread.
const MAX_ARGS: u64 = 8;

/// Bytes a marker or argument name can have at most (`kernel_stub::MAX_MARKER_NAME`).
const MAX_NAME: u64 = 64;

/// Why the marker table could not be read from the image.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the marker table (section `{SECTION}`) of {path}: {reason}")]
pub struct Error {
    /// The image path.
    pub path: String,
    /// What was wrong.
    pub reason: String,
}

/// One marker site found in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticMarker {
    /// The marker as the compiler sees it (its index is its position in the table).
    pub marker: Marker,
    /// The link-time address of its `MarkerSite` (what `PC` holds at the marker).
    pub address: u64,
}

/// The layout of `&str` or `&[T]`: a `{ data_ptr, length }` structure.
struct FatPointer {
    pointer_offset: u64,
    pointer_size: u64,
    length_offset: u64,
    length_size: u64,
    /// The pointed-to type (the slice's element).
    target: Option<TypeId>,
}

/// Every size, offset and value the decoder needs, from DWARF.
struct Layout {
    site_size: u64,
    name_offset: u64,
    args_offset: u64,
    string: FatPointer,
    slice: FatPointer,
    tuple_size: u64,
    tuple_name_offset: u64,
    tuple_type_offset: u64,
    arg_type_size: u64,
    /// `ArgType`'s enumerators: (discriminant, variant).
    arg_types: Vec<(u64, ArgType)>,
}

/// The marker table of `kernel`'s image, in table order; empty when the image has
/// no `probeport_markers` section.
pub fn read(kernel: &Kernel) -> Result<Vec<StaticMarker>, Error> {
    let Some((section_address, bytes)) = kernel.section_data(SECTION) else {
        return Ok(Vec::new());
    };
    let fail = |reason: String| Error {
        path: kernel.path().display().to_string(),
        reason,
    };
    let layout = Layout::from_dwarf(kernel).map_err(fail)?;
    if layout.site_size == 0 || !(bytes.len() as u64).is_multiple_of(layout.site_size) {
        return Err(fail(format!(
            "the section has {} bytes, not a whole number of {}-byte sites",
            bytes.len(),
            layout.site_size
        )));
    }
    let count = bytes.len() as u64 / layout.site_size;
    (0..count)
        .map(|index| {
            let address = section_address + index * layout.site_size;
            decode_site(kernel, &layout, address, index)
                .map_err(|reason| fail(format!("marker {index} at {address:#x}: {reason}")))
        })
        .collect()
}

/// The marker table as the compiler takes it (see [`read`]), or `None` when the
/// image has no `probeport_markers` section (its kernel may still announce markers
/// when it runs, so an empty table would be a guess).
pub fn read_markers(kernel: &Kernel) -> Result<Option<Vec<Marker>>, Error> {
    if kernel.section_data(SECTION).is_none() {
        return Ok(None);
    }
    Ok(Some(
        read(kernel)?.into_iter().map(|site| site.marker).collect(),
    ))
}

fn decode_site(
    kernel: &Kernel,
    layout: &Layout,
    address: u64,
    index: u64,
) -> Result<StaticMarker, String> {
    let name = read_str(kernel, &layout.string, address + layout.name_offset)
        .map_err(|reason| format!("its name: {reason}"))?;
    let (args_address, args_count) = read_fat(kernel, &layout.slice, address + layout.args_offset)
        .map_err(|reason| format!("its arguments: {reason}"))?;
    if args_count > MAX_ARGS {
        return Err(format!(
            "{args_count} arguments, more than a marker can have"
        ));
    }
    let args = (0..args_count)
        .map(|position| {
            let tuple = args_address + position * layout.tuple_size;
            let arg_name = read_str(kernel, &layout.string, tuple + layout.tuple_name_offset)
                .map_err(|reason| format!("argument {position}'s name: {reason}"))?;
            let discriminant = read_uint(
                kernel,
                tuple + layout.tuple_type_offset,
                layout.arg_type_size,
            )
            .ok_or_else(|| format!("argument {position}'s type is outside the image"))?;
            let ty = layout
                .arg_types
                .iter()
                .find(|(value, _)| *value == discriminant)
                .map(|(_, ty)| *ty)
                .ok_or_else(|| {
                    format!("argument {position}'s type has no ArgType discriminant {discriminant}")
                })?;
            Ok(MarkerArg { name: arg_name, ty })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(StaticMarker {
        marker: Marker {
            index: u32::try_from(index).map_err(|_| "too many markers".to_string())?,
            name,
            args,
        },
        address,
    })
}

/// An unsigned integer of `size` bytes (1, 2, 4 or 8) at `address`, in the
/// image's byte order.
fn read_uint(kernel: &Kernel, address: u64, size: u64) -> Option<u64> {
    let bytes = kernel.read_image(address, usize::try_from(size).ok()?)?;
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut value = 0u64;
    if kernel.is_little_endian() {
        for byte in bytes.iter().rev() {
            value = (value << 8) | u64::from(*byte);
        }
    } else {
        for byte in bytes {
            value = (value << 8) | u64::from(*byte);
        }
    }
    Some(value)
}

/// The pointer and length of the `&str` or `&[T]` at `address`.
fn read_fat(kernel: &Kernel, layout: &FatPointer, address: u64) -> Result<(u64, u64), String> {
    let pointer = read_uint(kernel, address + layout.pointer_offset, layout.pointer_size);
    let length = read_uint(kernel, address + layout.length_offset, layout.length_size);
    match (pointer, length) {
        (Some(pointer), Some(length)) => Ok((pointer, length)),
        _ => Err(format!(
            "the reference at {address:#x} is outside the image"
        )),
    }
}

/// The `&str` at `address`, following its pointer into the image.
fn read_str(kernel: &Kernel, layout: &FatPointer, address: u64) -> Result<String, String> {
    let (pointer, length) = read_fat(kernel, layout, address)?;
    if length > MAX_NAME {
        return Err(format!("a {length}-byte name, longer than a marker allows"));
    }
    let bytes = kernel
        .read_image(pointer, length as usize)
        .ok_or_else(|| format!("the string at {pointer:#x} is outside the image"))?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("the string at {pointer:#x} is not UTF-8"))
}

impl Layout {
    fn from_dwarf(kernel: &Kernel) -> Result<Layout, String> {
        let site = kernel
            .type_by_name(SITE_TYPE)
            .ok_or_else(|| format!("the DWARF has no {SITE_TYPE}"))?;
        let site_size = size(&site)?;
        let (name_offset, name_type) = member(kernel, &site, "name")?;
        let (args_offset, args_type) = member(kernel, &site, "args")?;
        let string = fat_pointer(kernel, name_type)?;
        let slice = fat_pointer(kernel, args_type)?;
        let tuple = resolved(kernel, slice.target, "the argument slice's element")?;
        let tuple_size = size(&tuple)?;
        let (tuple_name_offset, _) = member(kernel, &tuple, "__0")?;
        let (tuple_type_offset, arg_type) = member(kernel, &tuple, "__1")?;
        let arg_type = resolved(kernel, Some(arg_type), "the argument type")?;
        let TypeKind::Enum { enumerators } = &arg_type.kind else {
            return Err(format!("{} is not an enumeration", arg_type.name));
        };
        let arg_types = enumerators
            .iter()
            .map(|enumerator| {
                variant(&enumerator.name)
                    .map(|ty| (enumerator.value, ty))
                    .ok_or_else(|| {
                        format!(
                            "ArgType has a variant {} this client does not know",
                            enumerator.name
                        )
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Layout {
            site_size,
            name_offset,
            args_offset,
            string,
            slice,
            tuple_size,
            tuple_name_offset,
            tuple_type_offset,
            arg_type_size: size(&arg_type)?,
            arg_types,
        })
    }
}

/// The type `id` names, through typedefs and qualifiers.
fn resolved(kernel: &Kernel, id: Option<TypeId>, what: &str) -> Result<Type, String> {
    id.and_then(|id| kernel.strip_typedefs(id))
        .and_then(|id| kernel.type_info(id))
        .ok_or_else(|| format!("the DWARF does not describe {what}"))
}

fn size(ty: &Type) -> Result<u64, String> {
    ty.size
        .ok_or_else(|| format!("the DWARF gives no size for {}", ty.name))
}

/// A member's offset and type.
fn member(kernel: &Kernel, ty: &Type, name: &str) -> Result<(u64, TypeId), String> {
    kernel
        .member(ty.id, name)
        .and_then(|member| Some((member.offset, member.type_id?)))
        .ok_or_else(|| format!("{} has no member `{name}`", ty.name))
}

/// The layout of the `&str` or `&[T]` type `id`.
fn fat_pointer(kernel: &Kernel, id: TypeId) -> Result<FatPointer, String> {
    let ty = resolved(kernel, Some(id), "a reference")?;
    let (pointer_offset, pointer_type) = member(kernel, &ty, "data_ptr")?;
    let (length_offset, length_type) = member(kernel, &ty, "length")?;
    let pointer = resolved(kernel, Some(pointer_type), "a data pointer")?;
    let TypeKind::Pointer { target } = pointer.kind else {
        return Err(format!("{}'s data_ptr is not a pointer", ty.name));
    };
    Ok(FatPointer {
        pointer_offset,
        pointer_size: size(&pointer)?,
        length_offset,
        length_size: size(&resolved(kernel, Some(length_type), "a length")?)?,
        target,
    })
}

/// The protocol's `ArgType` variant named `name` (the contract both sides compile).
fn variant(name: &str) -> Option<ArgType> {
    Some(match name {
        "U8" => ArgType::U8,
        "U16" => ArgType::U16,
        "U32" => ArgType::U32,
        "U64" => ArgType::U64,
        "I8" => ArgType::I8,
        "I16" => ArgType::I16,
        "I32" => ArgType::I32,
        "I64" => ArgType::I64,
        "Bool" => ArgType::Bool,
        "Pointer" => ArgType::Pointer,
        "String" => ArgType::String,
        _ => return None,
    })
}
