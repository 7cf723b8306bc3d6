//! A resolver that adds the running stub's marker table to one that has none.
//!
//! Without the kernel's image (the Linux adapter), the only marker table is the
//! one the stub describes (`DescribeMarker`, PROTOCOL.md §8.4): the adapter
//! publishes kernel tracepoints there. [`WithMarkers`] answers marker questions
//! from that table and everything else from the resolver it wraps
//! ([`crate::uprobe::KernelSymbolResolver`] or [`crate::uprobe::UserResolver`]).

use lang::resolver::{
    Function, Marker, NameKind, ResolveError, Resolver, SiteRefusal, StatementSite, TypeId,
    TypeInfo, TypeKind, UserSite, UserTarget, Variable, glob_match,
};

/// `inner` with the stub's `markers`.
#[derive(Debug)]
pub struct WithMarkers<R> {
    /// The resolver for everything but markers.
    pub inner: R,
    /// The stub's marker table, in index order.
    pub markers: Vec<Marker>,
}

impl<R: Resolver> Resolver for WithMarkers<R> {
    fn functions(&self, pattern: &str) -> Vec<Function> {
        self.inner.functions(pattern)
    }

    fn instruction(&self, address: u64) -> Result<Vec<u8>, SiteRefusal> {
        self.inner.instruction(address)
    }

    fn statements(&self, file: &str, line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        self.inner.statements(file, line)
    }

    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError> {
        self.inner.variables(function, address)
    }

    fn markers(&self, pattern: &str) -> Vec<Marker> {
        self.markers
            .iter()
            .filter(|marker| glob_match(pattern, &marker.name))
            .cloned()
            .collect()
    }

    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId> {
        self.inner.find_type(kind, name)
    }

    fn type_info(&self, id: TypeId) -> Option<TypeInfo> {
        self.inner.type_info(id)
    }

    fn candidates(&self, kind: NameKind) -> Vec<String> {
        match kind {
            NameKind::Marker => self
                .markers
                .iter()
                .map(|marker| marker.name.clone())
                .collect(),
            other => self.inner.candidates(other),
        }
    }

    fn kernel_symbols(&self) -> bool {
        self.inner.kernel_symbols()
    }

    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        self.inner.user_site(path, target)
    }
}
