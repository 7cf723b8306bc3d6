//! The text of `probeport list`: one function per line, like a C prototype.

use std::fmt::Write as _;

use super::{Function, InstanceKind, Kernel};

/// What `probeport list` prints besides the prototypes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-v`: each parameter's location at the entry, the entry address, the
    /// declaration and the inlined instances.
    pub verbose: bool,
}

/// One function as `name(type name, type name)`; verbose adds, on following
/// indented lines, the entry address and size, the declaration, each parameter's
/// location at entry, and where the function is inlined.
pub fn format_function(function: &Function, options: ListOptions) -> String {
    let declaration = |parameter: &super::Parameter| match &parameter.name {
        Some(name) if parameter.type_name.ends_with('*') => {
            format!("{}{name}", parameter.type_name)
        }
        Some(name) => format!("{} {name}", parameter.type_name),
        None => parameter.type_name.clone(),
    };
    let mut parameters: Vec<String> = function.parameters.iter().map(declaration).collect();
    if function.variadic {
        parameters.push("...".into());
    }
    let mut text = format!("{}({})", function.name, parameters.join(", "));
    if !options.verbose {
        return text;
    }
    match function.entry() {
        Some(entry) => {
            let _ = write!(
                text,
                "\n    entry {entry:#x} size {} returns {}",
                function.size(),
                function.return_type_name
            );
        }
        None => {
            let _ = write!(
                text,
                "\n    inlined only, returns {}",
                function.return_type_name
            );
        }
    }
    if let (Some(file), Some(line)) = (&function.decl_file, function.decl_line) {
        let _ = write!(text, "\n    declared at {file}:{line}");
    }
    for parameter in &function.parameters {
        let _ = write!(
            text,
            "\n    {}: {}",
            declaration(parameter),
            parameter.location_at_entry
        );
    }
    for instance in function.out_of_line().skip(1) {
        let _ = write!(
            text,
            "\n    also out of line at {:#x} ({})",
            instance.entry_pc,
            instance.symbol.as_deref().unwrap_or("no symbol")
        );
    }
    for instance in function.inlined() {
        if let InstanceKind::Inlined {
            call_file,
            call_line,
        } = &instance.kind
        {
            let _ = write!(
                text,
                "\n    inlined at {:#x} from {}:{call_line}",
                instance.entry_pc,
                call_file.as_deref().unwrap_or("?")
            );
        }
    }
    text
}

/// Every function matching `pattern`, one [`format_function`] per line (blocks of
/// lines when verbose), sorted by name.
pub fn format_list(kernel: &Kernel, pattern: &str, options: ListOptions) -> String {
    let mut text = String::new();
    for function in kernel.functions(pattern) {
        text.push_str(&format_function(&function, options));
        text.push('\n');
    }
    text
}
