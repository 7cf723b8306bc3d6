//! Static markers: the [`marker!`](crate::marker) macro and the sink that leads a
//! firing marker to the stub.
//!
//! # Design
//!
//! A marker is a `static` [`MarkerSite`] in the linker section `probeport_markers`
//! plus a test of its `enabled` flag. Disabled, it costs one relaxed load and a
//! branch not taken; the call to [`fire_marker`] is out of line. The kernel's
//! linker script collects the section into one array, which the platform returns
//! from [`Platform::markers`](crate::Platform::markers); the client reads it with
//! `DescribeMarker`, arms a probe on an index, and the stub sets the flag at
//! `Start` (and clears it when no live probe uses the marker any more).
//!
//! A marker has no `Stub` at hand (the stub is generic over the platform), so
//! [`fire_marker`] goes through a sink the kernel registers once with
//! [`set_marker_sink`] — usually its static `Stub`, which implements
//! [`MarkerSink`].
//!
//! # Invariants
//!
//! - The sink is set at most once and read without a lock (`spin::Once`).
//! - A marker declares at most [`MAX_MARKER_ARGS`](crate::MAX_MARKER_ARGS)
//!   arguments and a name of at most 64 bytes, checked at compile time.

use crate::platform::MarkerSite;

/// Where firing markers go: implemented by [`crate::Stub`].
pub trait MarkerSink: Sync {
    /// A marker fired with these arguments (each widened to 64 bits as `as u64`
    /// does: signed values sign-extended). *Probe context.*
    fn fire(&self, site: &'static MarkerSite, args: &[u64]);
}

static SINK: spin::Once<&'static dyn MarkerSink> = spin::Once::new();

/// Registers where enabled markers go (usually the kernel's static `Stub`).
/// Only the first call counts; it returns whether this call set the sink.
pub fn set_marker_sink(sink: &'static dyn MarkerSink) -> bool {
    let mut this_call = false;
    SINK.call_once(|| {
        this_call = true;
        sink
    });
    this_call
}

/// Called by an enabled [`marker!`](crate::marker); forwards to the sink, if any.
#[cold]
#[inline(never)]
#[unsafe(link_section = ".text.probeport")]
pub fn fire_marker(site: &'static MarkerSite, args: &[u64]) {
    if let Some(sink) = SINK.get() {
        sink.fire(site, args);
    }
}

/// Places a static marker in kernel code.
///
/// ```ignore
/// kernel_stub::marker!("ipc:send", port: U64 = port_id, size: U32 = len);
/// ```
///
/// The first argument is the marker's name (`subsystem:event`, at most 64
/// bytes); each further one is `name: Type = value`, with `Type` an
/// [`ArgType`](crate::ArgType) variant (`U8` … `I64`, `Bool`, `Pointer`,
/// `String`) and `value` any expression that converts to `u64` with `as` (at most
/// eight arguments). The values are evaluated only when a probe is armed on the
/// marker and live; disabled, the marker costs one load and a branch not taken.
///
/// The macro defines a `static` [`MarkerSite`] in the linker
/// section `probeport_markers`. The kernel's linker script must keep that section
/// and make it one array the platform can return from
/// [`Platform::markers`](crate::Platform::markers). With GNU ld (or lld) on ELF,
/// a section named `probeport_markers` (a C identifier) gets the symbols
/// `__start_probeport_markers` and `__stop_probeport_markers` automatically when
/// the linker script does not place it; a script that places it defines them
/// itself (and `KEEP`s the section, since nothing references a marker site):
///
/// ```text
/// .probeport_markers : ALIGN(8) {
///     __start_probeport_markers = .;
///     KEEP(*(probeport_markers))
///     __stop_probeport_markers = .;
/// }
/// ```
///
/// ```ignore
/// // Declared as bytes: only their addresses matter.
/// unsafe extern "C" {
///     static __start_probeport_markers: u8;
///     static __stop_probeport_markers: u8;
/// }
/// fn markers(&self) -> &'static [kernel_stub::MarkerSite] {
///     let start = (&raw const __start_probeport_markers).cast::<kernel_stub::MarkerSite>();
///     let stop = (&raw const __stop_probeport_markers).cast::<kernel_stub::MarkerSite>();
///     let count = (stop as usize - start as usize) / size_of::<kernel_stub::MarkerSite>();
///     // SAFETY: the linker laid the section out as `count` consecutive sites,
///     // which live as long as the kernel.
///     unsafe { core::slice::from_raw_parts(start, count) }
/// }
/// ```
///
/// At a marker, context slot `i` holds argument `i` and `PC` holds the address of
/// the marker's `MarkerSite`. The kernel calls [`set_marker_sink`] once at boot.
#[macro_export]
macro_rules! marker {
    ($name:literal $(, $arg:ident : $ty:ident = $value:expr)* $(,)?) => {{
        #[used]
        #[unsafe(link_section = "probeport_markers")]
        static SITE: $crate::MarkerSite = $crate::MarkerSite::new(
            $name,
            &[$((::core::stringify!($arg), $crate::ArgType::$ty)),*],
        );
        const {
            ::core::assert!(
                <[&str]>::len(&[$(::core::stringify!($arg)),*]) <= $crate::MAX_MARKER_ARGS,
                "a marker has at most 8 arguments"
            );
            ::core::assert!(
                $name.len() <= $crate::MAX_MARKER_NAME,
                "a marker name has at most 64 bytes"
            );
        }
        if SITE.enabled.load(::core::sync::atomic::Ordering::Relaxed) {
            $crate::fire_marker(&SITE, &[$(($value) as u64),*]);
        }
    }};
}
