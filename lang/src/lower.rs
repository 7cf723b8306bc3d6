//! Lowering: names, types and code for one probe site, in one walk over the tree.
//!
//! # Design
//!
//! A [`Lowerer`] checks and emits at the same time: each expression comes back as
//! a [`Val`] — a scalar in the depth's register, a *place* (the address of kernel
//! memory of some type, in the depth's register, not yet read), or a buffer on the
//! handler stack (strings, stacks). Places are read only when a value is needed,
//! through the `read_kernel` helper, so `$msg->header.size` computes one address
//! and reads four bytes.
//!
//! A `.return` site has two builders: the return program and the entry program.
//! `@entry(expr)` (and `$param`, which means `@entry($param)` there) lowers `expr`
//! into the entry program, saves it with `entry_save` and reads the entry slot of
//! the context in the return program.
//!
//! Script functions are inlined: arguments become locals of a new scope that
//! cannot see the caller's locals, `return` stores to a result slot and jumps to
//! the end of the inlined body. Recursion is refused.
//!
//! Every error is reported where it is found, and lowering goes on with the next
//! statement, so one run shows every independent mistake.

use probe_port_protocol::context::{slot, x86_64};
use probe_port_protocol::isa::{Helper, op};
use probe_port_protocol::maps::AggregateKind;
use probe_port_protocol::message::{ArgType, TimerScope};

use crate::ast::{self, BinaryOp, Expr, ExprKind, Statement, StatementKind, TypeName, UnaryOp};
use crate::codegen::{Builder, CTX, Cond, FP, Label, Slot, TEMPS};
use crate::compile::{BUILTIN_FUNCTIONS, Compiler, MapValueState, const_int};
use crate::compiled::{Attachment, Field, FormatPiece, RecordKind, SiteSpec, ValueType};
use crate::diagnostic::{self, Diagnostic, closest};
use crate::format::RawPiece;
use crate::resolver::{
    Function, Location, LocationBinary, LocationOp, Marker, NameKind, TypeKind, Variable,
    VariableKind,
};
use crate::source::Span;
use crate::types::{I64, Type, U64, find_member, from_kernel};

/// A site a probe fires at.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) kind: SiteKind,
    pub(crate) description: String,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum SiteKind {
    /// An address in a function: its entry, an offset, or a source line.
    Code {
        function: Function,
        address: u64,
        at_entry: bool,
        expected: Vec<u8>,
    },
    /// The return of a function.
    Return {
        function: Function,
        expected: Vec<u8>,
    },
    /// A static marker.
    Marker(Marker),
    /// A timer.
    Timer { period_ns: u64, scope: TimerScope },
    /// An instruction of a user-space file (a function's entry or return, or a
    /// USDT marker): no debuginfo, registers and marker arguments only, memory
    /// read from the probed process.
    User {
        path: String,
        file_offset: u64,
        is_return: bool,
        ref_ctr_offset: u64,
        args: Vec<crate::resolver::UserArg>,
    },
    /// A kernel function named for the stub to resolve (PROTOCOL.md §8.10):
    /// registers, memory read from the kernel, and, when the resolver knows the
    /// function (from BTF), its parameters at the entry (offset 0, or through
    /// `@entry` at `.return`).
    Symbol {
        symbol: String,
        offset: u64,
        is_return: bool,
        function: Option<Function>,
    },
}

/// An error was reported; the statement is abandoned.
struct Reported;

type R<T> = Result<T, Reported>;

/// What an expression lowered to.
#[derive(Debug, Clone)]
enum Val {
    /// A value in the depth's register.
    Scalar(Type),
    /// The address of kernel memory holding a value of the type, in the depth's register.
    Place(Type),
    /// Bytes on the handler stack; `temp` when the slot belongs to the statement.
    Buf { slot: Slot, ty: Type, temp: bool },
    /// Nothing (a call of a function without `return value`).
    Void,
}

#[derive(Debug, Clone)]
struct LocalVar {
    name: String,
    slot: Slot,
    ty: Type,
    span: Span,
    /// Whether the scope frees the slot when it ends.
    owned: bool,
}

#[derive(Debug, Default)]
struct Scope {
    locals: Vec<LocalVar>,
    /// Lookups stop here: the scope of an inlined function's parameters.
    barrier: bool,
}

struct InlineFrame {
    name: String,
    end: Label,
    result: Option<(Slot, Type)>,
    /// The builder frame of the calling statement, which owns the result slot.
    frame: usize,
    /// Whether the function was called inside `@entry(...)`.
    in_entry: bool,
}

/// The register of a depth.
fn reg(depth: usize) -> u8 {
    TEMPS[depth]
}

/// The context byte offset of a slot.
fn ctx_offset(slot: usize) -> i16 {
    (slot * 8) as i16
}

pub(crate) fn lower_site(
    cx: &mut Compiler<'_>,
    site: &Site,
    prologues: &[&ast::Block],
    probe: &ast::Probe,
) -> Option<Attachment> {
    let errors_before = cx.error_count();
    let mut main = Builder::new();
    let exit = main.label();
    let entry = matches!(
        site.kind,
        SiteKind::Return { .. }
            | SiteKind::User {
                is_return: true,
                ..
            }
            | SiteKind::Symbol {
                is_return: true,
                ..
            }
    )
    .then(Builder::new);
    let mut lowerer = Lowerer {
        cx,
        site,
        main,
        entry,
        in_entry: false,
        entry_scope_base: 0,
        exit,
        scopes: vec![Scope::default()],
        entry_saves: Vec::new(),
        inline: Vec::new(),
        variables: None,
        entry_variables: None,
    };
    for prologue in prologues {
        for statement in &prologue.statements {
            lowerer.statement(statement);
        }
    }
    if let Some(predicate) = &probe.predicate {
        lowerer.main.open_frame();
        let _ = lowerer.branch(predicate, exit, false, 0);
        lowerer.main.close_frame();
    }
    lowerer.block(&probe.body);
    let Lowerer {
        main,
        entry,
        entry_saves,
        cx,
        ..
    } = lowerer;
    let program = main.finish(exit);
    let entry_program = match entry {
        Some(mut builder) if !entry_saves.is_empty() => {
            let done = builder.label();
            builder.finish(done)
        }
        _ => Vec::new(),
    };
    let limit = cx.options.max_insns;
    for (name, code) in [("handler", &program), ("entry program", &entry_program)] {
        if code.len() > limit {
            cx.error(
                Diagnostic::error(
                    diagnostic::PROGRAM_TOO_LONG,
                    probe.span,
                    format!(
                        "the {name} for {} is {} instructions long, above the limit of {limit}",
                        site.description,
                        code.len()
                    ),
                )
                .label("this probe")
                .help("split the work between several probes"),
            );
        }
    }
    if cx.error_count() > errors_before {
        return None;
    }
    let site_spec = match &site.kind {
        SiteKind::Code {
            address, expected, ..
        } => SiteSpec::Dynamic {
            address: *address,
            expected: expected.clone(),
        },
        SiteKind::Return { function, expected } => SiteSpec::Return {
            address: function.entry,
            expected: expected.clone(),
        },
        SiteKind::Marker(marker) => SiteSpec::Marker {
            index: marker.index,
        },
        SiteKind::Timer { period_ns, scope } => SiteSpec::Timer {
            period_ns: *period_ns,
            scope: *scope,
        },
        SiteKind::User {
            path,
            file_offset,
            is_return,
            ref_ctr_offset,
            ..
        } => SiteSpec::User {
            path: path.clone(),
            file_offset: *file_offset,
            is_return: *is_return,
            ref_ctr_offset: *ref_ctr_offset,
        },
        SiteKind::Symbol {
            symbol,
            offset,
            is_return,
            ..
        } => SiteSpec::KernelSymbol {
            symbol: symbol.clone(),
            offset: *offset,
            is_return: *is_return,
        },
    };
    Some(Attachment {
        site: site_spec,
        description: site.description.clone(),
        program,
        entry_program,
    })
}

struct Lowerer<'l, 'a> {
    cx: &'l mut Compiler<'a>,
    site: &'l Site,
    main: Builder,
    entry: Option<Builder>,
    in_entry: bool,
    /// Scopes below this index are invisible inside `@entry(...)`.
    entry_scope_base: usize,
    exit: Label,
    scopes: Vec<Scope>,
    /// What each entry slot holds: the expression's text and its type.
    entry_saves: Vec<(String, Type)>,
    inline: Vec<InlineFrame>,
    variables: Option<Vec<Variable>>,
    entry_variables: Option<Vec<Variable>>,
}

/// Builtin values by name.
const BUILTIN_VALUES: &[&str] = &["cpu", "tid", "comm", "nsecs", "probefunc", "kstack"];

/// Aggregation functions.
const AGGREGATIONS: &[&str] = &[
    "count", "sum", "min", "max", "avg", "stats", "hist", "lhist",
];

impl Lowerer<'_, '_> {
    fn b(&mut self) -> &mut Builder {
        if self.in_entry {
            self.entry
                .as_mut()
                .expect("entry mode only at return sites")
        } else {
            &mut self.main
        }
    }

    fn fail<T>(&mut self, diagnostic: Diagnostic) -> R<T> {
        self.cx.error(diagnostic);
        Err(Reported)
    }

    fn temp(&mut self, bytes: u16, span: Span) -> R<Slot> {
        match self.b().alloc_temp(bytes) {
            Some(slot) => Ok(slot),
            None => self.stack_exhausted(span),
        }
    }

    fn stack_exhausted<T>(&mut self, span: Span) -> R<T> {
        self.fail(
            Diagnostic::error(
                diagnostic::STACK_EXHAUSTED,
                span,
                "the handler needs more than its 512 bytes of stack here",
            )
            .label("no room left for this value")
            .help("use shorter strings (`str(p, 32)`), fewer locals, or split the probe"),
        )
    }

    // ----- statements -----

    fn block(&mut self, block: &ast::Block) {
        self.scopes.push(Scope::default());
        for statement in &block.statements {
            self.statement(statement);
        }
        self.pop_scope();
    }

    fn pop_scope(&mut self) {
        if let Some(scope) = self.scopes.pop() {
            for local in scope.locals {
                if local.owned {
                    self.b().free(local.slot);
                }
            }
        }
    }

    fn statement(&mut self, statement: &Statement) {
        self.b().open_frame();
        let _ = self.statement_inner(statement);
        self.b().close_frame();
    }

    fn statement_inner(&mut self, statement: &Statement) -> R<()> {
        match &statement.kind {
            StatementKind::Let { name, value } => self.let_statement(name, value),
            StatementKind::Assign {
                target,
                operator,
                value,
            } => self.assign(target, *operator, value, statement.span),
            StatementKind::If {
                condition,
                then_block,
                else_branch,
            } => {
                let otherwise = self.b().label();
                self.branch(condition, otherwise, false, 0)?;
                self.block(then_block);
                match else_branch {
                    Some(else_branch) => {
                        let end = self.b().label();
                        self.b().jump(end);
                        self.b().bind(otherwise);
                        match &else_branch.kind {
                            StatementKind::Block(block) => self.block(block),
                            _ => self.statement(else_branch),
                        }
                        self.b().bind(end);
                    }
                    None => self.b().bind(otherwise),
                }
                Ok(())
            }
            StatementKind::Return(value) => self.return_statement(value.as_ref(), statement.span),
            StatementKind::Expr(expr) => match &expr.kind {
                ExprKind::Call { name, args } => {
                    self.call(expr, name, args, 0, true)?;
                    Ok(())
                }
                _ => self.fail(
                    Diagnostic::error(
                        diagnostic::USELESS_EXPRESSION,
                        expr.span,
                        "this expression does nothing",
                    )
                    .label("its value is not used")
                    .help("assign it (`let x = ...;`, `@map[...] = ...;`) or print it with printf"),
                ),
            },
            StatementKind::Block(block) => {
                self.block(block);
                Ok(())
            }
        }
    }

    /// Jumps to `label` when `expr` is `when` (true or false), compiling
    /// comparisons, `!`, `&&` and `||` straight into jumps.
    fn branch(&mut self, expr: &Expr, label: Label, when: bool, depth: usize) -> R<()> {
        match &expr.kind {
            ExprKind::Unary {
                op: UnaryOp::Not,
                operand,
            } => self.branch(operand, label, !when, depth),
            ExprKind::Binary {
                op: op @ (BinaryOp::And | BinaryOp::Or),
                lhs,
                rhs,
            } => {
                // `a && b` is false when either is; `a || b` is true when either is.
                let short = (*op == BinaryOp::Or) == when;
                if short {
                    self.branch(lhs, label, when, depth)?;
                    self.branch(rhs, label, when, depth)
                } else {
                    let skip = self.b().label();
                    self.branch(lhs, skip, !when, depth)?;
                    self.branch(rhs, label, when, depth)?;
                    self.b().bind(skip);
                    Ok(())
                }
            }
            ExprKind::Binary { op, lhs, rhs }
                if op.is_comparison()
                    && !matches!(lhs.kind, ExprKind::Str(_))
                    && !matches!(rhs.kind, ExprKind::Str(_)) =>
            {
                let lhs_type = self.scalar_operand(lhs, depth, *op)?;
                let (rhs_type, operand) = self.rhs_operand(rhs, depth)?;
                let signed =
                    signed_operation(&lhs_type, is_literal(lhs), &rhs_type, is_literal(rhs));
                let mut cond = comparison(*op, signed);
                if !when {
                    cond = cond.inverse();
                }
                let b = self.b();
                match operand {
                    Ok(register) => b.jump_if_reg(cond, reg(depth), register, label),
                    Err(imm) => b.jump_if_imm(cond, reg(depth), imm, label),
                }
                Ok(())
            }
            _ => {
                self.condition(expr, depth)?;
                let cond = if when { Cond::Ne } else { Cond::Eq };
                self.b().jump_if_imm(cond, reg(depth), 0, label);
                Ok(())
            }
        }
    }

    /// Lowers a condition to a scalar in `reg(depth)`.
    fn condition(&mut self, expr: &Expr, depth: usize) -> R<()> {
        let val = self.expr(expr, depth)?;
        if let Val::Buf { ty, .. } = &val {
            let ty = ty.clone();
            return self.check_condition(&ty, expr.span);
        }
        let ty = self.read_scalar(val, expr.span, depth)?;
        self.check_condition(&ty, expr.span)
    }

    fn check_condition(&mut self, ty: &Type, span: Span) -> R<()> {
        if matches!(ty, Type::Int { .. } | Type::Bool | Type::Pointer(_)) {
            Ok(())
        } else {
            self.fail(
                Diagnostic::error(
                    diagnostic::NOT_A_CONDITION,
                    span,
                    format!("a condition must be an integer, boolean or pointer, not `{ty}`"),
                )
                .label("used as a condition"),
            )
        }
    }

    fn let_statement(&mut self, name: &ast::Ident, value: &Expr) -> R<()> {
        let scope = self.scopes.len() - 1;
        if let Some(first) = self.scopes[scope]
            .locals
            .iter()
            .find(|local| local.name == name.name)
        {
            let first = first.span;
            return self.fail(
                Diagnostic::error(
                    diagnostic::DUPLICATE_LOCAL,
                    name.span,
                    format!("`{}` is already declared in this block", name.name),
                )
                .label("declared again here")
                .secondary(first, "first declared here")
                .help(format!("assign it without `let`: `{} = ...;`", name.name)),
            );
        }
        if BUILTIN_VALUES.contains(&name.name.as_str()) {
            return self.fail(
                Diagnostic::error(
                    diagnostic::DUPLICATE_LOCAL,
                    name.span,
                    format!("`{}` is a builtin value", name.name),
                )
                .label("choose another name"),
            );
        }
        let value_val = self.value(value, 0)?;
        let (slot, ty) = match value_val {
            Val::Scalar(ty) => {
                let Some(slot) = self.b().alloc(8) else {
                    return self.stack_exhausted(value.span);
                };
                self.b().store(8, FP, slot.offset, reg(0));
                (slot, ty)
            }
            Val::Buf { slot, ty, temp } => {
                if temp {
                    self.b().keep(slot);
                    (slot, ty)
                } else {
                    let Some(copy) = self.b().alloc(slot.bytes()) else {
                        return self.stack_exhausted(value.span);
                    };
                    self.b()
                        .copy(copy.offset, slot.offset, u16::from(slot.words));
                    (copy, ty)
                }
            }
            Val::Void => return self.no_value(value),
            Val::Place(_) => unreachable!("value() reads places"),
        };
        self.scopes[scope].locals.push(LocalVar {
            name: name.name.clone(),
            slot,
            ty,
            span: name.span,
            owned: true,
        });
        Ok(())
    }

    fn find_local(&self, name: &str) -> Option<LocalVar> {
        for (index, scope) in self.scopes.iter().enumerate().rev() {
            if self.in_entry && index < self.entry_scope_base {
                return None;
            }
            if let Some(local) = scope.locals.iter().rev().find(|local| local.name == name) {
                return Some(local.clone());
            }
            if scope.barrier {
                return None;
            }
        }
        None
    }

    fn visible_locals(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (index, scope) in self.scopes.iter().enumerate().rev() {
            if self.in_entry && index < self.entry_scope_base {
                break;
            }
            names.extend(scope.locals.iter().map(|local| local.name.clone()));
            if scope.barrier {
                break;
            }
        }
        names
    }

    fn assign(
        &mut self,
        target: &Expr,
        operator: Option<BinaryOp>,
        value: &Expr,
        span: Span,
    ) -> R<()> {
        match &target.kind {
            ExprKind::Name(name) => {
                let Some(local) = self.find_local(name) else {
                    let locals = self.visible_locals();
                    let mut error = Diagnostic::error(
                        diagnostic::UNDECLARED_ASSIGNMENT,
                        target.span,
                        format!("`{name}` is not declared"),
                    )
                    .label("assigned before any `let`");
                    error = match closest(name, locals.iter().map(String::as_str)) {
                        Some(similar) => error.help(format!("did you mean `{similar}`?")),
                        None => error.help(format!("declare it first: `let {name} = ...;`")),
                    };
                    return self.fail(error);
                };
                match operator {
                    None => {
                        let assigned = self.value(value, 0)?;
                        self.store_local(&local, assigned, value.span)
                    }
                    Some(op) => {
                        if !local.ty.is_scalar() {
                            return self.fail(
                                Diagnostic::error(
                                    diagnostic::TYPE_MISMATCH,
                                    span,
                                    format!(
                                        "`{}=` needs a number, `{name}` is `{}`",
                                        op.symbol(),
                                        local.ty
                                    ),
                                )
                                .label("not a number"),
                            );
                        }
                        self.b().load(8, false, reg(0), FP, local.slot.offset);
                        let ty = self.arithmetic(op, local.ty.clone(), false, value, span, 0)?;
                        let _ = ty;
                        self.b().store(8, FP, local.slot.offset, reg(0));
                        Ok(())
                    }
                }
            }
            ExprKind::Map { name, keys } => self.map_assign(name, keys, operator, value, span),
            ExprKind::Context(_) | ExprKind::Member { .. } | ExprKind::Index { .. } => self.fail(
                Diagnostic::error(
                    diagnostic::NOT_ASSIGNABLE,
                    target.span,
                    "probes cannot write kernel memory",
                )
                .label("this is the kernel's")
                .help("keep the value in a local (`let x = ...;`) or a map"),
            ),
            _ => self.fail(
                Diagnostic::error(
                    diagnostic::NOT_ASSIGNABLE,
                    target.span,
                    "this cannot be assigned",
                )
                .label("expected a local or a map entry"),
            ),
        }
    }

    fn store_local(&mut self, local: &LocalVar, assigned: Val, span: Span) -> R<()> {
        match (assigned, &local.ty) {
            (Val::Scalar(_), ty) if ty.is_scalar() => {
                self.b().store(8, FP, local.slot.offset, reg(0));
                Ok(())
            }
            (
                Val::Buf {
                    slot,
                    ty: Type::Str(n),
                    ..
                },
                Type::Str(size),
            ) if n <= *size => {
                self.copy_padded(local.slot, slot);
                Ok(())
            }
            (Val::Buf { slot, ty, .. }, Type::Stack(depth)) if ty == Type::Stack(*depth) => {
                self.copy_padded(local.slot, slot);
                Ok(())
            }
            (Val::Void, _) => self.fail(
                Diagnostic::error(diagnostic::NO_VALUE, span, "this call returns no value")
                    .label("nothing to assign"),
            ),
            (other, _) => {
                let found = match other {
                    Val::Scalar(ty) | Val::Place(ty) | Val::Buf { ty, .. } => ty.to_string(),
                    Val::Void => "nothing".to_string(),
                };
                self.fail(
                    Diagnostic::error(
                        diagnostic::LOCAL_TYPE_MISMATCH,
                        span,
                        format!(
                            "`{}` holds `{}`, and this is `{found}`",
                            local.name, local.ty
                        ),
                    )
                    .label(format!("expected `{}`", local.ty))
                    .secondary(local.span, "declared here"),
                )
            }
        }
    }

    /// Copies `source` into `target`, zeroing the rest of `target`.
    fn copy_padded(&mut self, target: Slot, source: Slot) {
        let words = target.words.min(source.words);
        self.b()
            .copy(target.offset, source.offset, u16::from(words));
        if target.words > words {
            let rest = target.at(u16::from(words) * 8);
            self.b().zero(rest, u16::from(target.words - words));
        }
    }

    fn return_statement(&mut self, value: Option<&Expr>, span: Span) -> R<()> {
        let Some(frame_index) = self.inline.len().checked_sub(1) else {
            if let Some(value) = value {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::RETURN_VALUE_IN_PROBE,
                        value.span,
                        "a probe's `return` takes no value",
                    )
                    .label("a probe has no caller to return it to")
                    .help("`return;` ends the handler early"),
                );
            }
            let exit = self.exit;
            self.main.jump(exit);
            return Ok(());
        };
        let end = self.inline[frame_index].end;
        let Some(value) = value else {
            if self.inline[frame_index].result.is_some() {
                let name = self.inline[frame_index].name.clone();
                return self.fail(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        span,
                        format!("`{name}` returns a value elsewhere, so every `return` needs one"),
                    )
                    .label("returns nothing"),
                );
            }
            self.b().jump(end);
            return Ok(());
        };
        let returned = self.value(value, 0)?;
        let (ty, source) = match returned {
            Val::Scalar(ty) => (ty, None),
            Val::Buf { slot, ty, .. } => (ty, Some(slot)),
            Val::Void => return self.no_value(value),
            Val::Place(_) => unreachable!("value() reads places"),
        };
        let result = match self.inline[frame_index].result.clone() {
            Some((slot, expected)) => {
                let fits = match (&expected, &ty) {
                    (expected, ty) if expected.is_scalar() && ty.is_scalar() => true,
                    (Type::Str(have), Type::Str(new)) => new <= have,
                    (a, b) => a == b,
                };
                if !fits {
                    let name = self.inline[frame_index].name.clone();
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::TYPE_MISMATCH,
                            value.span,
                            format!("`{name}` returns `{expected}` elsewhere, and `{ty}` here"),
                        )
                        .label(format!("expected `{expected}`")),
                    );
                }
                slot
            }
            None => {
                // A string result gets the default string size, so that later
                // `return`s of other (shorter) strings fit.
                let ty = match ty {
                    Type::Str(size) => Type::Str(size.max(self.cx.options.string_size)),
                    ty => ty,
                };
                let bytes = if ty.is_scalar() { 8 } else { ty.size() as u16 };
                let frame = self.inline[frame_index].frame;
                let Some(slot) = self.b().alloc_in_frame(frame, bytes) else {
                    return self.stack_exhausted(value.span);
                };
                self.inline[frame_index].result = Some((slot, ty.clone()));
                slot
            }
        };
        match source {
            None => self.b().store(8, FP, result.offset, reg(0)),
            Some(source) => self.copy_padded(result, source),
        }
        self.b().jump(end);
        Ok(())
    }

    // ----- values -----

    fn no_value<T>(&mut self, expr: &Expr) -> R<T> {
        self.fail(
            Diagnostic::error(diagnostic::NO_VALUE, expr.span, "this returns no value")
                .label("used as a value"),
        )
    }

    /// Lowers `expr` and reads it if it is a place: a scalar in `reg(depth)`, or a
    /// buffer (strings, stacks, byte arrays read as strings).
    fn value(&mut self, expr: &Expr, depth: usize) -> R<Val> {
        let val = self.expr(expr, depth)?;
        match val {
            Val::Place(ty) if ty.is_byte_array() => {
                self.read_byte_array(&ty, None, expr.span, depth)
            }
            Val::Place(_) => Ok(Val::Scalar(self.read_scalar(val, expr.span, depth)?)),
            other => Ok(other),
        }
    }

    /// Lowers `expr` to a scalar in `reg(depth)`.
    fn scalar(&mut self, expr: &Expr, depth: usize) -> R<Type> {
        let val = self.expr(expr, depth)?;
        self.read_scalar(val, expr.span, depth)
    }

    fn read_scalar(&mut self, val: Val, span: Span, depth: usize) -> R<Type> {
        match val {
            Val::Scalar(ty) => Ok(ty),
            Val::Place(ty) if ty.is_scalar() => {
                self.read_place(&ty, depth, span)?;
                Ok(ty)
            }
            Val::Place(Type::Unsupported { name, reason }) => self.fail(
                Diagnostic::error(
                    diagnostic::UNSUPPORTED_TYPE,
                    span,
                    format!("cannot read a value of type `{name}`"),
                )
                .label(reason),
            ),
            Val::Place(ty) => {
                let mut error = Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    span,
                    format!("`{ty}` is not a number"),
                )
                .label("used as a number");
                error = match &ty {
                    Type::Record { .. } => {
                        error.help("name one of its members, or take its address with `&`")
                    }
                    ty if ty.is_byte_array() => error.help("print it as a string with `%s`"),
                    Type::Array { .. } => error.help("index it: `[0]`"),
                    _ => error,
                };
                self.fail(error)
            }
            Val::Buf { ty, .. } => self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    span,
                    format!("`{ty}` is not a number"),
                )
                .label("used as a number"),
            ),
            Val::Void => self.fail(
                Diagnostic::error(diagnostic::NO_VALUE, span, "this returns no value")
                    .label("used as a value"),
            ),
        }
    }

    /// Reads the scalar of `ty` at the address in `reg(depth)` into `reg(depth)`.
    fn read_place(&mut self, ty: &Type, depth: usize, span: Span) -> R<()> {
        let bytes = ty.size() as u8;
        let Some(slot) = self.b().alloc(8) else {
            return self.stack_exhausted(span);
        };
        let read = self.read_helper();
        let b = self.b();
        b.stack_pointer(1, slot.offset);
        b.mov_imm(2, i64::from(bytes));
        b.mov_reg(3, reg(depth));
        b.call(read);
        b.load(bytes, ty.is_signed(), reg(depth), FP, slot.offset);
        b.free(slot);
        Ok(())
    }

    /// Reads a byte array at the address in `reg(depth)` as a string buffer.
    fn read_byte_array(
        &mut self,
        ty: &Type,
        limit: Option<u16>,
        span: Span,
        depth: usize,
    ) -> R<Val> {
        let count = ty.size().min(256) as u16;
        let size = limit.map_or(count, |limit| limit.min(count));
        let slot = self.temp(size, span)?;
        let read = self.read_helper();
        let b = self.b();
        b.stack_pointer(1, slot.offset);
        b.mov_imm(2, i64::from(size));
        b.mov_reg(3, reg(depth));
        b.call(read);
        Ok(Val::Buf {
            slot,
            ty: Type::Str(size),
            temp: true,
        })
    }

    /// Lowers the right operand of a binary operation while `reg(depth)` holds the
    /// left one; returns the right operand's type and register.
    fn with_rhs(&mut self, depth: usize, rhs: &Expr) -> R<(Type, u8)> {
        if depth + 1 < TEMPS.len() {
            let ty = self.scalar(rhs, depth + 1)?;
            return Ok((ty, reg(depth + 1)));
        }
        let spill = self.temp(8, rhs.span)?;
        self.b().store(8, FP, spill.offset, reg(depth));
        let ty = self.scalar(rhs, depth)?;
        let b = self.b();
        b.mov_reg(0, reg(depth));
        b.load(8, false, reg(depth), FP, spill.offset);
        Ok((ty, 0))
    }

    // ----- expressions -----

    fn expr(&mut self, expr: &Expr, depth: usize) -> R<Val> {
        let span = expr.span;
        match &expr.kind {
            ExprKind::Int(value) => {
                self.b().mov_imm(reg(depth), *value as i64);
                Ok(Val::Scalar(if *value > i64::MAX as u64 {
                    U64
                } else {
                    I64
                }))
            }
            ExprKind::Bool(value) => {
                self.b().mov_imm(reg(depth), i64::from(*value));
                Ok(Val::Scalar(Type::Bool))
            }
            ExprKind::Str(value) => self.string_literal(value, span),
            ExprKind::Context(name) => self.context(name, span, depth),
            ExprKind::Parms => self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    span,
                    "`$$parms` can only be printed",
                )
                .label("not a value")
                .help("printf(\"%s\\n\", $$parms)"),
            ),
            ExprKind::Map { name, keys } => self.map_read(name, keys, span, depth),
            ExprKind::Entry(inner) => self.entry(inner, span, depth),
            ExprKind::Name(name) => self.name(name, span, depth),
            ExprKind::Call { name, args } => self.call(expr, name, args, depth, false),
            ExprKind::Unary { op, operand } => self.unary(*op, operand, span, depth),
            ExprKind::Binary { op, lhs, rhs } => self.binary(*op, lhs, rhs, span, depth),
            ExprKind::Conditional {
                condition,
                then_value,
                else_value,
            } => {
                let otherwise = self.b().label();
                let end = self.b().label();
                self.branch(condition, otherwise, false, depth)?;
                let then_type = self.scalar(then_value, depth)?;
                self.b().jump(end);
                self.b().bind(otherwise);
                let else_type = self.scalar(else_value, depth)?;
                self.b().bind(end);
                Ok(Val::Scalar(match (&then_type, &else_type) {
                    (Type::Bool, Type::Bool) => Type::Bool,
                    (Type::Int { .. } | Type::Bool, Type::Int { .. } | Type::Bool) => Type::Int {
                        bytes: 8,
                        signed: then_type.is_signed() && else_type.is_signed(),
                    },
                    (Type::Pointer(_), _) => then_type,
                    (_, Type::Pointer(_)) => else_type,
                    _ => then_type,
                }))
            }
            ExprKind::Cast { ty, operand } => self.cast(ty, operand, span, depth),
            ExprKind::Member {
                base,
                member,
                arrow,
            } => self.member(base, member, *arrow, depth),
            ExprKind::Index { base, index } => self.index(base, index, span, depth),
        }
    }

    fn string_literal(&mut self, value: &str, span: Span) -> R<Val> {
        let bytes = value.as_bytes();
        if bytes.len() >= 256 {
            return self.fail(
                Diagnostic::error(
                    diagnostic::STRING_TOO_LONG,
                    span,
                    "string literals used as values are at most 255 bytes",
                )
                .label(format!("{} bytes", bytes.len())),
            );
        }
        let size = bytes.len() as u16 + 1;
        let slot = self.temp(size, span)?;
        let mut padded = bytes.to_vec();
        padded.resize(usize::from(slot.bytes()), 0);
        for (index, chunk) in padded.chunks(4).enumerate() {
            let word = u32::from_le_bytes(chunk.try_into().expect("chunks of 4"));
            self.b()
                .store_imm_word(slot.at(index as u16 * 4), word as i32);
        }
        Ok(Val::Buf {
            slot,
            ty: Type::Str(size),
            temp: true,
        })
    }

    // ----- context -----

    /// The helper reading the probed code's memory: the process's at user sites.
    fn read_helper(&self) -> Helper {
        if self.in_user_space() {
            Helper::ReadUser
        } else {
            Helper::ReadKernel
        }
    }

    /// The string form of [`Self::read_helper`].
    fn read_str_helper(&self) -> Helper {
        if self.in_user_space() {
            Helper::ReadUserStr
        } else {
            Helper::ReadKernelStr
        }
    }

    /// Whether the site's memory is a user process's.
    fn in_user_space(&self) -> bool {
        matches!(self.site.kind, SiteKind::User { .. })
    }

    fn context(&mut self, name: &str, span: Span, depth: usize) -> R<Val> {
        if name == "return"
            && let SiteKind::User { is_return, .. } | SiteKind::Symbol { is_return, .. } =
                &self.site.kind
        {
            if !is_return {
                let help = if matches!(self.site.kind, SiteKind::User { .. }) {
                    "probe process(\"path\").function(\"name\").return"
                } else {
                    "probe kernel.function(\"name\").return"
                };
                return self.fail(
                    Diagnostic::error(
                        diagnostic::RETURN_OUTSIDE_RETURN,
                        span,
                        "`$return` is only known in `.return` probes",
                    )
                    .label("no return value here")
                    .help(help),
                );
            }
            // Typed when the resolver knows the function's return type (BTF).
            if let SiteKind::Symbol {
                function: Some(function),
                ..
            } = &self.site.kind
                && let Some(return_type) = function.return_type
                && !self.in_entry
            {
                let ty = from_kernel(self.cx.resolver, return_type);
                if ty.is_scalar() {
                    let b = self.b();
                    b.load(8, false, reg(depth), CTX, ctx_offset(x86_64::RETURN_SLOT));
                    narrow_to(b, &ty, reg(depth));
                    return Ok(Val::Scalar(ty));
                }
            }
            // No type: the raw return register, as a signed 64-bit value.
            let b = self.b();
            b.load(8, false, reg(depth), CTX, ctx_offset(x86_64::RETURN_SLOT));
            return Ok(Val::Scalar(crate::types::I64));
        }
        if name == "return" {
            return self.return_value(span, depth);
        }
        match &self.site.kind {
            SiteKind::User { args, .. } => {
                let args = args.clone();
                let Some(arg) = args.iter().find(|arg| arg.name == name) else {
                    let names: Vec<&str> = args.iter().map(|arg| arg.name.as_str()).collect();
                    let description = self.site.description.clone();
                    return self.unknown_variable(name, span, &names, &description);
                };
                let bytes = arg.size.unsigned_abs();
                if !matches!(bytes, 1 | 2 | 4 | 8) {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::UNSUPPORTED_TYPE,
                            span,
                            format!("`${name}` has {bytes} bytes, which cannot be read"),
                        )
                        .label("marker arguments of 1, 2, 4 or 8 bytes only"),
                    );
                }
                let ty = Type::Int {
                    bytes,
                    signed: arg.size < 0,
                };
                let b = self.b();
                b.load(8, false, reg(depth), CTX, ctx_offset(arg.slot));
                narrow_to(b, &ty, reg(depth));
                Ok(Val::Scalar(ty))
            }
            SiteKind::Symbol { function: None, .. } => self.fail(
                Diagnostic::error(
                    diagnostic::UNKNOWN_VARIABLE,
                    span,
                    format!("unknown variable `${name}`"),
                )
                .label(format!("{} has no variables", self.site.description))
                .note("the kernel's function is named by symbol, and no type information describes it")
                .help("read registers with reg(\"rdi\"), or give the kernel's types (--btf) or image (--kernel)"),
            ),
            SiteKind::Timer { .. } => self.fail(
                Diagnostic::error(
                    diagnostic::NO_CONTEXT,
                    span,
                    format!("`${name}`: timer probes have no variables"),
                )
                .label("a timer interrupts whatever runs")
                .help("registers are still readable with reg(\"name\")"),
            ),
            SiteKind::Marker(marker) => {
                let marker = marker.clone();
                let Some(index) = marker.args.iter().position(|arg| arg.name == name) else {
                    let names: Vec<&str> =
                        marker.args.iter().map(|arg| arg.name.as_str()).collect();
                    return self.unknown_variable(
                        name,
                        span,
                        &names,
                        &format!("marker {}", marker.name),
                    );
                };
                let ty = marker_type(marker.args[index].ty);
                let b = self.b();
                b.load(8, false, reg(depth), CTX, ctx_offset(index));
                narrow_to(b, &ty, reg(depth));
                Ok(Val::Scalar(ty))
            }
            SiteKind::Return { .. }
            | SiteKind::Symbol {
                is_return: true, ..
            } if !self.in_entry => {
                let key = format!("${name}");
                let name = name.to_string();
                self.entry_capture(key, span, depth, move |lowerer| {
                    let val = lowerer.context(&name, span, 0)?;
                    lowerer.read_scalar(val, span, 0)
                })
            }
            SiteKind::Code { .. } | SiteKind::Return { .. } | SiteKind::Symbol { .. } => {
                let variables = self.variables()?;
                let Some(variable) = variables
                    .iter()
                    .rev()
                    .find(|variable| variable.name == name)
                else {
                    let names: Vec<&str> = variables.iter().map(|v| v.name.as_str()).collect();
                    let description = self.site.description.clone();
                    return self.unknown_variable(name, span, &names, &description);
                };
                let variable = variable.clone();
                self.variable(&variable, span, depth)
            }
        }
    }

    fn unknown_variable<T>(&mut self, name: &str, span: Span, names: &[&str], site: &str) -> R<T> {
        let mut error = Diagnostic::error(
            diagnostic::UNKNOWN_VARIABLE,
            span,
            format!("unknown variable `${name}`"),
        )
        .label(format!("not a variable at {site}"));
        if let Some(similar) = closest(name, names.iter().copied()) {
            error = error.help(format!("did you mean `${similar}`?"));
        }
        if names.is_empty() {
            error = error.note(format!("{site} has no variables"));
        } else {
            let list: Vec<String> = names.iter().map(|name| format!("${name}")).collect();
            error = error.note(format!("variables at {site}: {}", list.join(", ")));
        }
        self.fail(error)
    }

    /// The variables at the site (for return sites: at the function's entry).
    fn variables(&mut self) -> R<Vec<Variable>> {
        let (function, address, entry) = match &self.site.kind {
            SiteKind::Code {
                function, address, ..
            } => (function.clone(), *address, false),
            SiteKind::Return { function, .. } => (function.clone(), function.entry, true),
            SiteKind::Symbol {
                function: Some(function),
                offset,
                is_return,
                ..
            } => (function.clone(), function.entry + offset, *is_return),
            _ => return Ok(Vec::new()),
        };
        let cache = if entry {
            &self.entry_variables
        } else {
            &self.variables
        };
        if let Some(variables) = cache {
            return Ok(variables.clone());
        }
        match self.cx.resolver.variables(&function, address) {
            Ok(variables) => {
                if entry {
                    self.entry_variables = Some(variables.clone());
                } else {
                    self.variables = Some(variables.clone());
                }
                Ok(variables)
            }
            Err(error) => {
                let span = self.site.span;
                self.fail(
                    Diagnostic::error(diagnostic::RESOLVER, span, error.message)
                        .label(format!("while reading the variables of {}", function.name)),
                )
            }
        }
    }

    /// Whether the site is a function's entry (entry values are live registers there).
    fn at_entry(&self) -> bool {
        match &self.site.kind {
            SiteKind::Code { at_entry, .. } => *at_entry,
            SiteKind::Return { .. }
            | SiteKind::Symbol {
                is_return: true, ..
            } => self.in_entry,
            SiteKind::Symbol { offset, .. } => *offset == 0,
            _ => false,
        }
    }

    fn variable(&mut self, variable: &Variable, span: Span, depth: usize) -> R<Val> {
        let ty = from_kernel(self.cx.resolver, variable.ty);
        let register_value = |lowerer: &mut Self, register: u8, ty: Type| -> R<Val> {
            if !ty.is_scalar() {
                return lowerer.fail(
                    Diagnostic::error(
                        diagnostic::UNSUPPORTED_TYPE,
                        span,
                        format!("`${}` is a `{ty}` held in registers", variable.name),
                    )
                    .label("cannot be read as a whole")
                    .help("values in registers must be integers, booleans or pointers"),
                );
            }
            let b = lowerer.b();
            b.load(8, false, reg(depth), CTX, ctx_offset(register as usize));
            narrow_to(b, &ty, reg(depth));
            Ok(Val::Scalar(ty))
        };
        match &variable.location {
            Location::Register(register) => register_value(self, *register, ty),
            Location::EntryValue(register) if self.at_entry() => {
                register_value(self, *register, ty)
            }
            Location::EntryValue(register) => {
                let register_name = x86_64::REGISTER_NAMES
                    .get(*register as usize)
                    .copied()
                    .unwrap_or("?");
                let description = self.site.description.clone();
                self.fail(
                    Diagnostic::error(
                        diagnostic::ENTRY_VALUE_LOCATION,
                        span,
                        format!(
                            "`${}` at {description} is the value `{register_name}` had when the function was entered",
                            variable.name
                        ),
                    )
                    .label("not kept anywhere at this address")
                    .help(
                        "probe the function's entry, or use its `.return` probe where \
                         `$name` is captured at entry",
                    ),
                )
            }
            Location::Memory { register, offset } => {
                let b = self.b();
                b.load(8, false, reg(depth), CTX, ctx_offset(*register as usize));
                add_offset(b, reg(depth), *offset);
                Ok(Val::Place(ty))
            }
            Location::RegisterValue { register, offset } => {
                let b = self.b();
                b.load(8, false, reg(depth), CTX, ctx_offset(*register as usize));
                add_offset(b, reg(depth), *offset);
                narrow_to(b, &ty, reg(depth));
                Ok(Val::Scalar(ty))
            }
            Location::Address(address) => {
                self.b().mov_imm(reg(depth), *address as i64);
                Ok(Val::Place(ty))
            }
            Location::Constant(value) => {
                let b = self.b();
                b.mov_imm(reg(depth), *value as i64);
                narrow_to(b, &ty, reg(depth));
                Ok(Val::Scalar(ty))
            }
            Location::Computed { ops, in_memory } => {
                if !*in_memory && !ty.is_scalar() {
                    return register_value(self, 0, ty);
                }
                let result = self.computed(variable, ops, span)?;
                let b = self.b();
                b.load(8, false, reg(depth), FP, result.offset);
                if *in_memory {
                    Ok(Val::Place(ty))
                } else {
                    narrow_to(b, &ty, reg(depth));
                    Ok(Val::Scalar(ty))
                }
            }
            Location::Unavailable(reason) => {
                let description = self.site.description.clone();
                self.fail(
                    Diagnostic::error(
                        diagnostic::UNAVAILABLE_VARIABLE,
                        span,
                        format!("`${}` has no value at {description}", variable.name),
                    )
                    .label(reason.clone())
                    .help("probe another address, such as the function's entry"),
                )
            }
        }
    }

    /// Runs a location program at compile time on a stack of slots, emitting the
    /// code for each operation; returns the slot holding the result.
    fn computed(&mut self, variable: &Variable, ops: &[LocationOp], span: Span) -> R<Slot> {
        const MAX_STACK: usize = 16;
        let malformed = |lowerer: &mut Self, why: &str| -> R<Slot> {
            let name = variable.name.clone();
            lowerer.fail(
                Diagnostic::error(
                    diagnostic::RESOLVER,
                    span,
                    format!("the location of `${name}` cannot be evaluated: {why}"),
                )
                .label("its debuginfo location program is malformed"),
            )
        };
        let mut stack: Vec<Slot> = Vec::new();
        for op in ops {
            match *op {
                LocationOp::Register(register) | LocationOp::EntryValue(register) => {
                    if register as usize >= slot::REGISTER_SLOTS {
                        return malformed(self, "it reads a register the probe context lacks");
                    }
                    if matches!(op, LocationOp::EntryValue(_)) && !self.at_entry() {
                        let description = self.site.description.clone();
                        let name = variable.name.clone();
                        self.fail(
                            Diagnostic::error(
                                diagnostic::ENTRY_VALUE_LOCATION,
                                span,
                                format!(
                                    "`${name}` at {description} is computed from a register's value at the function's entry"
                                ),
                            )
                            .label("not kept anywhere at this address")
                            .help(
                                "probe the function's entry, or use its `.return` probe where \
                                 `$name` is captured at entry",
                            ),
                        )?;
                    }
                    let top = self.temp(8, span)?;
                    let b = self.b();
                    b.load(8, false, 0, CTX, ctx_offset(register as usize));
                    b.store(8, FP, top.offset, 0);
                    stack.push(top);
                }
                LocationOp::Constant(value) => {
                    let top = self.temp(8, span)?;
                    let b = self.b();
                    b.mov_imm(0, value as i64);
                    b.store(8, FP, top.offset, 0);
                    stack.push(top);
                }
                LocationOp::PlusConstant(value) => {
                    let Some(top) = stack.last().copied() else {
                        return malformed(self, "an addition on an empty stack");
                    };
                    let b = self.b();
                    b.load(8, false, 0, FP, top.offset);
                    add_offset(b, 0, value as i64);
                    b.store(8, FP, top.offset, 0);
                }
                LocationOp::Deref(size) => {
                    let Some(top) = stack.last().copied() else {
                        return malformed(self, "a dereference of an empty stack");
                    };
                    if !matches!(size, 1 | 2 | 4 | 8) {
                        return malformed(self, "a dereference of an odd size");
                    }
                    let b = self.b();
                    b.load(8, false, 3, FP, top.offset);
                    b.store_imm(top.offset, 0);
                    b.stack_pointer(1, top.offset);
                    b.mov_imm(2, i64::from(size));
                    b.call(Helper::ReadKernel);
                }
                LocationOp::Binary(operator) => {
                    if stack.len() < 2 {
                        return malformed(self, "a binary operation on fewer than two values");
                    }
                    let right = stack.pop().expect("checked");
                    let left = *stack.last().expect("checked");
                    let b = self.b();
                    b.load(8, false, 0, FP, left.offset);
                    b.load(8, false, 1, FP, right.offset);
                    let arithmetic = match operator {
                        LocationBinary::Add => Some((op::ADD, false)),
                        LocationBinary::Sub => Some((op::SUB, false)),
                        LocationBinary::Mul => Some((op::MUL, false)),
                        LocationBinary::And => Some((op::AND, false)),
                        LocationBinary::Or => Some((op::OR, false)),
                        LocationBinary::Xor => Some((op::XOR, false)),
                        LocationBinary::Shl => Some((op::LSH, false)),
                        LocationBinary::Shr => Some((op::RSH, false)),
                        LocationBinary::Shra => Some((op::ARSH, false)),
                        LocationBinary::Div => Some((op::DIV, true)),
                        LocationBinary::Mod => Some((op::MOD, false)),
                        _ => None,
                    };
                    match arithmetic {
                        Some((operation, signed)) => b.alu_reg(operation, 0, 1, signed),
                        None => {
                            let cond = match operator {
                                LocationBinary::Eq => Cond::Eq,
                                LocationBinary::Ne => Cond::Ne,
                                LocationBinary::Lt => Cond::SignedLt,
                                LocationBinary::Le => Cond::SignedLe,
                                LocationBinary::Gt => Cond::SignedGt,
                                _ => Cond::SignedGe,
                            };
                            let yes = b.label();
                            let end = b.label();
                            b.jump_if_reg(cond, 0, 1, yes);
                            b.mov_imm(0, 0);
                            b.jump(end);
                            b.bind(yes);
                            b.mov_imm(0, 1);
                            b.bind(end);
                        }
                    }
                    b.store(8, FP, left.offset, 0);
                }
                LocationOp::Neg | LocationOp::Not | LocationOp::Abs => {
                    let Some(top) = stack.last().copied() else {
                        return malformed(self, "a unary operation on an empty stack");
                    };
                    let b = self.b();
                    b.load(8, false, 0, FP, top.offset);
                    match op {
                        LocationOp::Neg => b.neg(0),
                        LocationOp::Not => b.alu_imm(op::XOR, 0, -1),
                        _ => {
                            let positive = b.label();
                            b.jump_if_imm(Cond::SignedGe, 0, 0, positive);
                            b.neg(0);
                            b.bind(positive);
                        }
                    }
                    b.store(8, FP, top.offset, 0);
                }
                LocationOp::Pick(depth) => {
                    let Some(source) = stack
                        .len()
                        .checked_sub(1 + depth as usize)
                        .map(|i| stack[i])
                    else {
                        return malformed(self, "a pick deeper than the stack");
                    };
                    let top = self.temp(8, span)?;
                    self.b().copy(top.offset, source.offset, 1);
                    stack.push(top);
                }
                LocationOp::Swap => {
                    let len = stack.len();
                    if len < 2 {
                        return malformed(self, "a swap of fewer than two values");
                    }
                    stack.swap(len - 1, len - 2);
                }
                LocationOp::Rot => {
                    let len = stack.len();
                    if len < 3 {
                        return malformed(self, "a rotation of fewer than three values");
                    }
                    let top = stack.remove(len - 1);
                    stack.insert(len - 3, top);
                }
                LocationOp::Drop => {
                    if stack.pop().is_none() {
                        return malformed(self, "a drop from an empty stack");
                    }
                }
            }
            if stack.len() > MAX_STACK {
                return malformed(self, "its stack grows past 16 values");
            }
        }
        match stack.last() {
            Some(top) => Ok(*top),
            None => malformed(self, "it leaves no value"),
        }
    }

    fn return_value(&mut self, span: Span, depth: usize) -> R<Val> {
        let function = match &self.site.kind {
            SiteKind::Return { function, .. } if !self.in_entry => function.clone(),
            _ => {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::RETURN_OUTSIDE_RETURN,
                        span,
                        "`$return` is only known in `.return` probes",
                    )
                    .label("no return value here")
                    .help("probe kernel.function(\"name\").return"),
                );
            }
        };
        let Some(return_type) = function.return_type else {
            return self.fail(
                Diagnostic::error(
                    diagnostic::RETURN_OUTSIDE_RETURN,
                    span,
                    format!("`{}` returns nothing", function.name),
                )
                .label("no return value"),
            );
        };
        let ty = from_kernel(self.cx.resolver, return_type);
        if !ty.is_scalar() {
            return self.fail(
                Diagnostic::error(
                    diagnostic::UNSUPPORTED_TYPE,
                    span,
                    format!("`{}` returns `{ty}`, which cannot be read", function.name),
                )
                .label(match &ty {
                    Type::Unsupported { reason, .. } => reason.clone(),
                    _ => "only integers, booleans and pointers are returned in a register"
                        .to_string(),
                })
                .help("the raw return register is reg(\"rax\")"),
            );
        }
        let b = self.b();
        b.load(8, false, reg(depth), CTX, ctx_offset(x86_64::RETURN_SLOT));
        narrow_to(b, &ty, reg(depth));
        Ok(Val::Scalar(ty))
    }

    fn entry(&mut self, inner: &Expr, span: Span, depth: usize) -> R<Val> {
        let return_site = matches!(
            self.site.kind,
            SiteKind::Return { .. }
                | SiteKind::User {
                    is_return: true,
                    ..
                }
                | SiteKind::Symbol {
                    is_return: true,
                    ..
                }
        );
        if !return_site || self.in_entry {
            let nested = self.in_entry;
            return self.fail(
                Diagnostic::error(
                    diagnostic::ENTRY_OUTSIDE_RETURN,
                    span,
                    if nested {
                        "`@entry` cannot be nested"
                    } else {
                        "`@entry(...)` is only known in `.return` probes"
                    },
                )
                .label(if nested {
                    "already evaluated at entry"
                } else {
                    "no function entry to evaluate this at"
                }),
            );
        }
        let key = self.cx.sources.snippet(inner.span).to_string();
        let inner = inner.clone();
        self.entry_capture(key, span, depth, move |lowerer| lowerer.scalar(&inner, 0))
    }

    /// Evaluates a scalar in the entry program (once per distinct `key`), and reads
    /// it from the context's entry slots in the return program.
    fn entry_capture(
        &mut self,
        key: String,
        span: Span,
        depth: usize,
        inner: impl FnOnce(&mut Self) -> R<Type>,
    ) -> R<Val> {
        let index = match self.entry_saves.iter().position(|(saved, _)| *saved == key) {
            Some(index) => index,
            None => {
                if self.entry_saves.len() == probe_port_protocol::context::ENTRY_SLOTS {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::TOO_MANY_ENTRY_VALUES,
                            span,
                            "a return probe keeps at most 8 values from the function's entry",
                        )
                        .label("a ninth entry value")
                        .help(
                            "each distinct `@entry(...)` and `$parameter` takes one of the 8 slots",
                        ),
                    );
                }
                self.in_entry = true;
                self.entry_scope_base = self.scopes.len();
                self.b().open_frame();
                let result = inner(self);
                self.b().close_frame();
                self.in_entry = false;
                let ty = result?;
                let index = self.entry_saves.len();
                let entry = self
                    .entry
                    .as_mut()
                    .expect("return sites have an entry builder");
                entry.mov_imm(1, index as i64);
                entry.mov_reg(2, reg(0));
                entry.call(Helper::EntrySave);
                self.entry_saves.push((key, ty));
                index
            }
        };
        let ty = self.entry_saves[index].1.clone();
        self.b().load(
            8,
            false,
            reg(depth),
            CTX,
            ctx_offset(slot::ENTRY_BASE + index),
        );
        Ok(Val::Scalar(ty))
    }

    // ----- names and builtins -----

    fn name(&mut self, name: &str, span: Span, depth: usize) -> R<Val> {
        if let Some(local) = self.find_local(name) {
            if local.ty.is_scalar() {
                self.b().load(8, false, reg(depth), FP, local.slot.offset);
                return Ok(Val::Scalar(local.ty));
            }
            return Ok(Val::Buf {
                slot: local.slot,
                ty: local.ty,
                temp: false,
            });
        }
        match name {
            "cpu" => {
                let b = self.b();
                b.call(Helper::Cpu);
                b.mov_reg(reg(depth), 0);
                Ok(Val::Scalar(Type::Int {
                    bytes: 4,
                    signed: false,
                }))
            }
            "tid" => {
                let b = self.b();
                b.call(Helper::TaskId);
                b.mov_reg(reg(depth), 0);
                Ok(Val::Scalar(U64))
            }
            "nsecs" => {
                let b = self.b();
                b.call(Helper::TimeNs);
                b.mov_reg(reg(depth), 0);
                Ok(Val::Scalar(U64))
            }
            "comm" => {
                let slot = self.temp(16, span)?;
                let b = self.b();
                b.stack_pointer(1, slot.offset);
                b.mov_imm(2, 16);
                b.call(Helper::TaskName);
                Ok(Val::Buf {
                    slot,
                    ty: Type::Str(16),
                    temp: true,
                })
            }
            "probefunc" => {
                self.b()
                    .load(8, false, reg(depth), CTX, ctx_offset(slot::PC));
                Ok(Val::Scalar(Type::Symbol))
            }
            "kstack" => {
                let depth_frames = self.cx.options.stack_depth;
                self.kernel_stack(depth_frames, span)
            }
            _ => {
                let mut names = self.visible_locals();
                if self.in_entry {
                    let outer: Vec<String> = self.scopes[..self.entry_scope_base]
                        .iter()
                        .flat_map(|scope| scope.locals.iter().map(|local| local.name.clone()))
                        .collect();
                    if outer.iter().any(|outer| outer == name) {
                        return self.fail(
                            Diagnostic::error(
                                diagnostic::ENTRY_OUTSIDE_RETURN,
                                span,
                                format!("the local `{name}` is not known at the function's entry"),
                            )
                            .label("computed by the return probe, after the entry")
                            .help(
                                "`@entry(...)` may use the function's variables, builtins and maps",
                            ),
                        );
                    }
                }
                names.extend(BUILTIN_VALUES.iter().map(|name| name.to_string()));
                let mut error = Diagnostic::error(
                    diagnostic::UNKNOWN_NAME,
                    span,
                    format!("unknown name `{name}`"),
                )
                .label("not a local or a builtin");
                if let Some(similar) = closest(name, names.iter().map(String::as_str)) {
                    error = error.help(format!("did you mean `{similar}`?"));
                } else if self.site_has_variable(name) {
                    error = error.help(format!(
                        "variables of the probed code are written with `$`: `${name}`"
                    ));
                }
                self.fail(error)
            }
        }
    }

    /// Whether `$name` would be a variable at this site (for hints; asks nothing new
    /// of the resolver when the variables are already known).
    fn site_has_variable(&mut self, name: &str) -> bool {
        match &self.site.kind {
            SiteKind::Marker(marker) => marker.args.iter().any(|arg| arg.name == name),
            SiteKind::User { args, .. } => args.iter().any(|arg| arg.name == name),
            SiteKind::Code { .. } | SiteKind::Return { .. } | SiteKind::Symbol { .. } => {
                let saved = self.in_entry;
                self.in_entry = matches!(
                    self.site.kind,
                    SiteKind::Return { .. }
                        | SiteKind::Symbol {
                            is_return: true,
                            ..
                        }
                );
                let found = self
                    .cx
                    .resolver_variables_quiet(&self.site.kind)
                    .is_some_and(|variables| variables.iter().any(|v| v.name == name));
                self.in_entry = saved;
                found
            }
            SiteKind::Timer { .. } => false,
        }
    }

    fn kernel_stack(&mut self, frames: u16, span: Span) -> R<Val> {
        let slot = self.temp(frames * 8, span)?;
        let b = self.b();
        b.zero(slot.offset, frames);
        b.stack_pointer(1, slot.offset);
        b.mov_imm(2, i64::from(frames) * 8);
        b.call(Helper::StackTrace);
        Ok(Val::Buf {
            slot,
            ty: Type::Stack(frames),
            temp: true,
        })
    }

    fn constant_argument(
        &mut self,
        expr: &Expr,
        what: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> R<i64> {
        let Some(value) = const_int(expr) else {
            return self.fail(
                Diagnostic::error(
                    diagnostic::NOT_CONSTANT,
                    expr.span,
                    format!("{what} must be a constant"),
                )
                .label("not known when the script compiles"),
            );
        };
        if !range.contains(&value) {
            return self.fail(
                Diagnostic::error(
                    diagnostic::STRING_TOO_LONG,
                    expr.span,
                    format!(
                        "{what} must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                )
                .label(format!("{value} is out of range")),
            );
        }
        Ok(value)
    }

    fn call(
        &mut self,
        expr: &Expr,
        name: &ast::Ident,
        args: &[Expr],
        depth: usize,
        statement: bool,
    ) -> R<Val> {
        let span = expr.span;
        let function = name.name.as_str();
        let statement_only = ["printf", "print", "clear", "delete", "exit"];
        if statement_only.contains(&function) && !statement {
            return self.fail(
                Diagnostic::error(
                    diagnostic::NO_VALUE,
                    span,
                    format!("`{function}` returns no value"),
                )
                .label("used as a value"),
            );
        }
        match function {
            "printf" => self.printf(span, args).map(|()| Val::Void),
            "print" | "clear" => {
                let map = self.cx.map_argument(function, span, args).ok_or(Reported)?;
                let kind = if function == "print" {
                    RecordKind::PrintMap(map)
                } else {
                    RecordKind::ClearMap(map)
                };
                self.action_record(kind, span)?;
                Ok(Val::Void)
            }
            "exit" => {
                if !args.is_empty() {
                    self.cx.arity(span, "exit", 0, args.len());
                    return Err(Reported);
                }
                self.action_record(RecordKind::Exit, span)?;
                Ok(Val::Void)
            }
            "delete" => self.delete(span, args).map(|()| Val::Void),
            "str" => {
                if args.is_empty() || args.len() > 2 {
                    self.cx.arity(span, "str", 1, args.len());
                    return Err(Reported);
                }
                let limit = match args.get(1) {
                    Some(size) => {
                        Some(self.constant_argument(size, "the size of `str`", 1..=256)? as u16)
                    }
                    None => None,
                };
                let val = self.expr(&args[0], depth)?;
                match val {
                    Val::Buf {
                        ty: Type::Str(_), ..
                    } => Ok(val),
                    Val::Place(ty) if ty.is_byte_array() => {
                        self.read_byte_array(&ty, limit, args[0].span, depth)
                    }
                    val => {
                        let ty = self.read_scalar(val, args[0].span, depth)?;
                        if !matches!(ty, Type::Pointer(_) | Type::Int { .. }) {
                            return self.fail(
                                Diagnostic::error(
                                    diagnostic::NOT_A_POINTER,
                                    args[0].span,
                                    format!("`str` reads a string at a pointer, not from a `{ty}`"),
                                )
                                .label("not a pointer"),
                            );
                        }
                        let size = limit.unwrap_or(self.cx.options.string_size);
                        let slot = self.temp(size, span)?;
                        let read = self.read_str_helper();
                        let by_address = matches!(self.site.kind, SiteKind::Symbol { .. });
                        let b = self.b();
                        b.zero(slot.offset, u16::from(slot.words));
                        b.stack_pointer(1, slot.offset);
                        b.mov_imm(2, i64::from(size));
                        b.mov_reg(3, reg(depth));
                        if by_address {
                            // A Linux kernel function's pointer parameter may point to
                            // user memory (`__user`, which GCC-built kernels' BTF does
                            // not record): on x86-64 the user half of the address space
                            // is the lower one, so an address with the top bit clear is
                            // read as user memory, any other as kernel memory.
                            let kernel = b.label();
                            let done = b.label();
                            b.jump_if_imm(Cond::SignedLt, 3, 0, kernel);
                            b.call(Helper::ReadUserStr);
                            b.jump(done);
                            b.bind(kernel);
                            b.call(read);
                            b.bind(done);
                        } else {
                            b.call(read);
                        }
                        Ok(Val::Buf {
                            slot,
                            ty: Type::Str(size),
                            temp: true,
                        })
                    }
                }
            }
            "reg" => {
                if args.len() != 1 {
                    self.cx.arity(span, "reg", 1, args.len());
                    return Err(Reported);
                }
                let ExprKind::Str(register) = &args[0].kind else {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_CONSTANT,
                            args[0].span,
                            "`reg` takes a register name in quotes",
                        )
                        .label("expected a string such as \"rdi\""),
                    );
                };
                let context_slot = match register.as_str() {
                    "rip" | "pc" => Some(slot::PC),
                    "rflags" | "flags" => Some(slot::FLAGS),
                    other => x86_64::register_slot(other),
                };
                let Some(context_slot) = context_slot else {
                    let mut error = Diagnostic::error(
                        diagnostic::UNKNOWN_REGISTER,
                        args[0].span,
                        format!("unknown register `{register}`"),
                    )
                    .label("not an x86_64 register")
                    .note(format!(
                        "registers: {}, rip, rflags",
                        x86_64::REGISTER_NAMES.join(", ")
                    ));
                    if let Some(similar) = closest(register, x86_64::REGISTER_NAMES) {
                        error = error.help(format!("did you mean `{similar}`?"));
                    }
                    return self.fail(error);
                };
                self.b()
                    .load(8, false, reg(depth), CTX, ctx_offset(context_slot));
                Ok(Val::Scalar(U64))
            }
            "ksym" => {
                if args.len() != 1 {
                    self.cx.arity(span, "ksym", 1, args.len());
                    return Err(Reported);
                }
                self.scalar(&args[0], depth)?;
                Ok(Val::Scalar(Type::Symbol))
            }
            "x86_64_syscall" => {
                if args.len() != 1 {
                    self.cx.arity(span, "x86_64_syscall", 1, args.len());
                    return Err(Reported);
                }
                self.scalar(&args[0], depth)?;
                Ok(Val::Scalar(Type::Syscall))
            }
            "kstack" => {
                if args.len() > 1 {
                    self.cx.arity(span, "kstack", 1, args.len());
                    return Err(Reported);
                }
                let frames = match args.first() {
                    Some(frames) => {
                        self.constant_argument(frames, "the depth of `kstack`", 1..=32)? as u16
                    }
                    None => self.cx.options.stack_depth,
                };
                self.kernel_stack(frames, span)
            }
            _ if AGGREGATIONS.contains(&function) => self.fail(
                Diagnostic::error(
                    diagnostic::MISPLACED_AGGREGATION,
                    span,
                    format!("`{function}()` can only be assigned to a map"),
                )
                .label("aggregations live in maps")
                .help(format!("write `@name[keys] = {function}(...);`")),
            ),
            _ => {
                let Some(definition) = self.cx.functions.get(function).copied() else {
                    let mut candidates: Vec<&str> = BUILTIN_FUNCTIONS.to_vec();
                    let defined: Vec<String> = self.cx.functions.keys().cloned().collect();
                    candidates.extend(defined.iter().map(String::as_str));
                    let mut error = Diagnostic::error(
                        diagnostic::UNKNOWN_FUNCTION,
                        name.span,
                        format!("unknown function `{function}`"),
                    )
                    .label("neither builtin nor defined in the script or a tapset");
                    if let Some(similar) = closest(function, candidates) {
                        error = error.help(format!("did you mean `{similar}`?"));
                    }
                    return self.fail(error);
                };
                self.inline_call(definition, args, span, depth)
            }
        }
    }

    fn inline_call(
        &mut self,
        function: &ast::Function,
        args: &[Expr],
        span: Span,
        depth: usize,
    ) -> R<Val> {
        if args.len() != function.params.len() {
            self.cx
                .arity(span, &function.name.name, function.params.len(), args.len());
            return Err(Reported);
        }
        if self
            .inline
            .iter()
            .any(|frame| frame.name == function.name.name)
        {
            let chain: Vec<&str> = self
                .inline
                .iter()
                .map(|frame| frame.name.as_str())
                .collect();
            return self.fail(
                Diagnostic::error(
                    diagnostic::RECURSION,
                    span,
                    format!("`{}` calls itself", function.name.name),
                )
                .label("recursive call")
                .secondary(function.name.span, "defined here")
                .note(format!(
                    "call chain: {} -> {}",
                    chain.join(" -> "),
                    function.name.name
                ))
                .note("functions are inlined into the handler, which has no loops or calls"),
            );
        }
        if self.inline.len() >= 16 {
            return self.fail(
                Diagnostic::error(
                    diagnostic::RECURSION,
                    span,
                    "functions are nested more than 16 calls deep",
                )
                .label("too deep"),
            );
        }
        // Keep the caller's partial results across the inlined body.
        let mut spills = Vec::new();
        for live in 0..depth {
            let slot = self.temp(8, span)?;
            self.b().store(8, FP, slot.offset, reg(live));
            spills.push(slot);
        }
        let mut locals = Vec::new();
        for (param, arg) in function.params.iter().zip(args) {
            let val = self.value(arg, 0)?;
            let local = match val {
                Val::Scalar(ty) => {
                    let slot = self.temp(8, arg.span)?;
                    self.b().store(8, FP, slot.offset, reg(0));
                    LocalVar {
                        name: param.name.clone(),
                        slot,
                        ty,
                        span: param.span,
                        owned: false,
                    }
                }
                Val::Buf { slot, ty, .. } => LocalVar {
                    name: param.name.clone(),
                    slot,
                    ty,
                    span: param.span,
                    owned: false,
                },
                Val::Void => return self.no_value(arg),
                Val::Place(_) => unreachable!("value() reads places"),
            };
            locals.push(local);
        }
        let end = self.b().label();
        let frame = self.b().frame_depth() - 1;
        let errors_before = self.cx.error_count();
        self.scopes.push(Scope {
            locals,
            barrier: true,
        });
        self.inline.push(InlineFrame {
            name: function.name.name.clone(),
            end,
            result: None,
            frame,
            in_entry: self.in_entry,
        });
        for statement in &function.body.statements {
            self.statement(statement);
        }
        let frame = self.inline.pop().expect("pushed above");
        debug_assert_eq!(frame.in_entry, self.in_entry);
        self.b().bind(end);
        self.pop_scope();
        for (live, slot) in spills.iter().enumerate() {
            self.b().load(8, false, reg(live), FP, slot.offset);
        }
        Ok(match frame.result {
            // The body failed before any `return`: the caller's error would be noise.
            None if self.cx.error_count() > errors_before => return Err(Reported),
            None => Val::Void,
            Some((slot, ty)) if ty.is_scalar() => {
                self.b().load(8, false, reg(depth), FP, slot.offset);
                Val::Scalar(ty)
            }
            Some((slot, ty)) => Val::Buf {
                slot,
                ty,
                temp: true,
            },
        })
    }

    // ----- operators -----

    fn unary(&mut self, op: UnaryOp, operand: &Expr, span: Span, depth: usize) -> R<Val> {
        match op {
            UnaryOp::Negate => {
                let ty = self.scalar(operand, depth)?;
                self.require_number(&ty, operand.span, "`-`")?;
                self.b().neg(reg(depth));
                Ok(Val::Scalar(I64))
            }
            UnaryOp::BitNot => {
                let ty = self.scalar(operand, depth)?;
                self.require_number(&ty, operand.span, "`~`")?;
                self.b().alu_imm(op::XOR, reg(depth), -1);
                Ok(Val::Scalar(Type::Int {
                    bytes: 8,
                    signed: ty.is_signed(),
                }))
            }
            UnaryOp::Not => {
                self.condition(operand, depth)?;
                self.truth(Cond::Eq, depth, None);
                Ok(Val::Scalar(Type::Bool))
            }
            UnaryOp::Deref => {
                let ty = self.scalar(operand, depth)?;
                match ty {
                    Type::Pointer(target) if target.size() > 0 => Ok(Val::Place(*target)),
                    Type::Pointer(target) => self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_POINTER,
                            span,
                            format!("cannot read through a `{target} *`"),
                        )
                        .label("its target has no size")
                        .help("cast it to a pointer to a real type first: `*(u64 *)p`"),
                    ),
                    other => self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_POINTER,
                            operand.span,
                            format!("`*` needs a pointer, not `{other}`"),
                        )
                        .label("not a pointer")
                        .help("cast an address to a pointer first: `*(u64 *)address`"),
                    ),
                }
            }
            UnaryOp::AddressOf => match self.expr(operand, depth)? {
                Val::Place(ty) => Ok(Val::Scalar(Type::Pointer(Box::new(ty)))),
                _ => self.fail(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        operand.span,
                        "`&` needs something in kernel memory",
                    )
                    .label("this value has no kernel address"),
                ),
            },
        }
    }

    fn require_number(&mut self, ty: &Type, span: Span, what: &str) -> R<()> {
        if matches!(ty, Type::Int { .. } | Type::Bool) {
            Ok(())
        } else {
            self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    span,
                    format!("{what} needs an integer, not `{ty}`"),
                )
                .label("not an integer"),
            )
        }
    }

    /// `reg(depth) = (reg(depth) cond rhs) ? 1 : 0`; `rhs` is a register or, when
    /// `None`, the immediate 0.
    fn truth(&mut self, cond: Cond, depth: usize, rhs: Option<Result<u8, i32>>) {
        let b = self.b();
        let yes = b.label();
        let end = b.label();
        match rhs {
            None => b.jump_if_imm(cond, reg(depth), 0, yes),
            Some(Ok(register)) => b.jump_if_reg(cond, reg(depth), register, yes),
            Some(Err(imm)) => b.jump_if_imm(cond, reg(depth), imm, yes),
        }
        b.mov_imm(reg(depth), 0);
        b.jump(end);
        b.bind(yes);
        b.mov_imm(reg(depth), 1);
        b.bind(end);
    }

    fn binary(&mut self, op: BinaryOp, lhs: &Expr, rhs: &Expr, span: Span, depth: usize) -> R<Val> {
        if matches!(op, BinaryOp::And | BinaryOp::Or) {
            return self.logical(op, lhs, rhs, depth);
        }
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne)
            && (matches!(lhs.kind, ExprKind::Str(_)) || matches!(rhs.kind, ExprKind::Str(_)))
        {
            return self.string_compare(op, lhs, rhs, span, depth);
        }
        let lhs_type = self.scalar_operand(lhs, depth, op)?;
        let lhs_literal = is_literal(lhs);
        if op.is_comparison() {
            let (rhs_type, operand) = self.rhs_operand(rhs, depth)?;
            let signed = signed_operation(&lhs_type, lhs_literal, &rhs_type, is_literal(rhs));
            let cond = comparison(op, signed);
            self.truth(cond, depth, Some(operand));
            return Ok(Val::Scalar(Type::Bool));
        }
        let ty = self.arithmetic(op, lhs_type, lhs_literal, rhs, span, depth)?;
        Ok(Val::Scalar(ty))
    }

    fn scalar_operand(&mut self, expr: &Expr, depth: usize, op: BinaryOp) -> R<Type> {
        let val = self.expr(expr, depth)?;
        if let Val::Buf { ty, .. } = &val {
            let ty = ty.clone();
            return self.fail(
                Diagnostic::error(
                    diagnostic::STRING_COMPARISON,
                    expr.span,
                    format!("`{}` cannot be used with `{}`", ty, op.symbol()),
                )
                .label("a string")
                .help("strings compare only with `==` or `!=` against a string literal"),
            );
        }
        self.read_scalar(val, expr.span, depth)
    }

    /// The right operand: an immediate when it is a small literal, else a register.
    fn rhs_operand(&mut self, rhs: &Expr, depth: usize) -> R<(Type, Result<u8, i32>)> {
        if let ExprKind::Int(value) = rhs.kind
            && let Ok(imm) = i32::try_from(value)
        {
            return Ok((I64, Err(imm)));
        }
        let val = self.expr_for_rhs(rhs, depth)?;
        Ok((val.0, Ok(val.1)))
    }

    fn expr_for_rhs(&mut self, rhs: &Expr, depth: usize) -> R<(Type, u8)> {
        if let ExprKind::Str(_) = rhs.kind {
            return self.fail(
                Diagnostic::error(
                    diagnostic::STRING_COMPARISON,
                    rhs.span,
                    "a string literal cannot be used here",
                )
                .label("a string"),
            );
        }
        self.with_rhs(depth, rhs)
    }

    /// `reg(depth) = reg(depth) op rhs`, where `reg(depth)` holds a `lhs_type`.
    fn arithmetic(
        &mut self,
        op: BinaryOp,
        lhs_type: Type,
        lhs_literal: bool,
        rhs: &Expr,
        span: Span,
        depth: usize,
    ) -> R<Type> {
        let (rhs_type, mut operand) = self.rhs_operand(rhs, depth)?;
        let rhs_literal = is_literal(rhs);
        let pointer_target = |ty: &Type| match ty {
            Type::Pointer(target) => Some(target.size().max(1)),
            _ => None,
        };
        let lhs_pointer = pointer_target(&lhs_type);
        let rhs_pointer = pointer_target(&rhs_type);
        for (ty, side) in [(&lhs_type, "left"), (&rhs_type, "right")] {
            if matches!(ty, Type::Symbol) {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        span,
                        format!("the {side} operand of `{}` is a symbol", op.symbol()),
                    )
                    .label("symbols can only be printed or used as keys"),
                );
            }
        }
        let signed = signed_operation(&lhs_type, lhs_literal, &rhs_type, rhs_literal);
        let operation = match op {
            BinaryOp::Add => op::ADD,
            BinaryOp::Sub => op::SUB,
            BinaryOp::Mul => op::MUL,
            BinaryOp::Div => op::DIV,
            BinaryOp::Rem => op::MOD,
            BinaryOp::BitAnd => op::AND,
            BinaryOp::BitOr => op::OR,
            BinaryOp::BitXor => op::XOR,
            BinaryOp::Shl => op::LSH,
            BinaryOp::Shr if lhs_type.is_signed() => op::ARSH,
            BinaryOp::Shr => op::RSH,
            _ => unreachable!("arithmetic only"),
        };
        let result = match (op, lhs_pointer, rhs_pointer) {
            (BinaryOp::Add | BinaryOp::Sub, Some(size), None) => {
                operand = self.scale(operand, size);
                lhs_type.clone()
            }
            (BinaryOp::Add, None, Some(size)) => {
                // int + pointer: scale the left operand.
                if size > 1 {
                    self.b().alu_imm(op::MUL, reg(depth), size as i32);
                }
                rhs_type.clone()
            }
            (BinaryOp::Sub, Some(_), Some(_)) => I64,
            (_, None, None) => Type::Int { bytes: 8, signed },
            _ => {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        span,
                        format!(
                            "cannot apply `{}` to `{lhs_type}` and `{rhs_type}`",
                            op.symbol()
                        ),
                    )
                    .label("pointers only add or subtract integers, and subtract each other"),
                );
            }
        };
        let b = self.b();
        let operand = match operand {
            Err(imm) if matches!(op, BinaryOp::Shl | BinaryOp::Shr) && !(0..64).contains(&imm) => {
                b.mov_imm(0, i64::from(imm));
                Ok(0)
            }
            Err(imm) if matches!(op, BinaryOp::Div | BinaryOp::Rem) && signed => {
                b.mov_imm(0, i64::from(imm));
                Ok(0)
            }
            other => other,
        };
        let signed_division = signed && matches!(op, BinaryOp::Div | BinaryOp::Rem);
        match operand {
            Ok(register) => b.alu_reg(operation, reg(depth), register, signed_division),
            Err(imm) => b.alu_imm(operation, reg(depth), imm),
        }
        if let (BinaryOp::Sub, Some(size), Some(_)) = (op, lhs_pointer, rhs_pointer)
            && size > 1
        {
            b.mov_imm(0, size as i64);
            b.alu_reg(op::DIV, reg(depth), 0, true);
        }
        Ok(result)
    }

    /// Scales an integer operand by a pointer's element size.
    fn scale(&mut self, operand: Result<u8, i32>, size: u64) -> Result<u8, i32> {
        if size <= 1 {
            return operand;
        }
        match operand {
            Ok(register) => {
                self.b().alu_imm(op::MUL, register, size as i32);
                Ok(register)
            }
            Err(imm) => match i32::try_from(i64::from(imm) * size as i64) {
                Ok(scaled) => Err(scaled),
                Err(_) => {
                    self.b().mov_imm(0, i64::from(imm) * size as i64);
                    Ok(0)
                }
            },
        }
    }

    fn logical(&mut self, op: BinaryOp, lhs: &Expr, rhs: &Expr, depth: usize) -> R<Val> {
        let decided = self.b().label();
        let end = self.b().label();
        let (cond, decided_value, other_value) = if op == BinaryOp::And {
            (Cond::Eq, 0, 1)
        } else {
            (Cond::Ne, 1, 0)
        };
        for side in [lhs, rhs] {
            self.condition(side, depth)?;
            self.b().jump_if_imm(cond, reg(depth), 0, decided);
        }
        let b = self.b();
        b.mov_imm(reg(depth), other_value);
        b.jump(end);
        b.bind(decided);
        b.mov_imm(reg(depth), decided_value);
        b.bind(end);
        Ok(Val::Scalar(Type::Bool))
    }

    fn string_compare(
        &mut self,
        op: BinaryOp,
        lhs: &Expr,
        rhs: &Expr,
        span: Span,
        depth: usize,
    ) -> R<Val> {
        let (literal, other) = match (&lhs.kind, &rhs.kind) {
            (ExprKind::Str(literal), _) => (literal, rhs),
            (_, ExprKind::Str(literal)) => (literal, lhs),
            _ => unreachable!("one side is a literal"),
        };
        if matches!(other.kind, ExprKind::Str(_)) {
            return self.fail(
                Diagnostic::error(
                    diagnostic::STRING_COMPARISON,
                    span,
                    "comparing two string literals",
                )
                .label("always the same result"),
            );
        }
        let val = self.value(other, depth)?;
        let (slot, size) = match val {
            Val::Buf {
                slot,
                ty: Type::Str(size),
                ..
            } => (slot, size),
            other_val => {
                let found = match other_val {
                    Val::Scalar(ty) | Val::Place(ty) | Val::Buf { ty, .. } => ty.to_string(),
                    Val::Void => "nothing".to_string(),
                };
                return self.fail(
                    Diagnostic::error(
                        diagnostic::STRING_COMPARISON,
                        other.span,
                        format!("`{found}` compared with a string"),
                    )
                    .label("not a string")
                    .help("read a string first: `str(pointer) == \"...\"`"),
                );
            }
        };
        let mut bytes = literal.as_bytes().to_vec();
        let b = self.b();
        let unequal = b.label();
        let end = b.label();
        if bytes.len() > usize::from(size) {
            // Longer than the buffer can hold: never equal.
            b.mov_imm(reg(depth), i64::from(op == BinaryOp::Ne));
            return Ok(Val::Scalar(Type::Bool));
        }
        // Compare the literal with its NUL, or the whole buffer if the literal fills it.
        if bytes.len() < usize::from(size) {
            bytes.push(0);
        }
        for (index, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            b.load(8, false, 0, FP, slot.at(index as u16 * 8));
            if chunk.len() < 8 {
                let mask = (1u64 << (chunk.len() * 8)) - 1;
                b.mov_imm(1, mask as i64);
                b.alu_reg(op::AND, 0, 1, false);
            }
            b.mov_imm(1, u64::from_le_bytes(word) as i64);
            b.jump_if_reg(Cond::Ne, 0, 1, unequal);
        }
        let (equal_value, unequal_value) = if op == BinaryOp::Eq { (1, 0) } else { (0, 1) };
        b.mov_imm(reg(depth), equal_value);
        b.jump(end);
        b.bind(unequal);
        b.mov_imm(reg(depth), unequal_value);
        b.bind(end);
        Ok(Val::Scalar(Type::Bool))
    }

    // ----- casts, members, indexing -----

    fn resolve_type(&mut self, ty: &ast::TypeExpr) -> R<Type> {
        let resolver = self.cx.resolver;
        let (kind, name) = match &ty.base {
            TypeName::Builtin(builtin) => {
                let base = match builtin {
                    ast::Builtin::Int { bytes, signed } => Type::Int {
                        bytes: *bytes,
                        signed: *signed,
                    },
                    ast::Builtin::Bool => Type::Bool,
                    ast::Builtin::Void => Type::Void,
                };
                return Ok(wrap_pointers(base, ty.pointers));
            }
            TypeName::Struct(name) => (TypeKind::Struct, name),
            TypeName::Union(name) => (TypeKind::Union, name),
            TypeName::Enum(name) => (TypeKind::Enum, name),
            TypeName::Named(name) => (TypeKind::Named, name),
        };
        let Some(id) = resolver.find_type(kind, name) else {
            let keyword = match kind {
                TypeKind::Struct => "struct ",
                TypeKind::Union => "union ",
                TypeKind::Enum => "enum ",
                TypeKind::Named => "",
            };
            let candidates = resolver.candidates(NameKind::Type(kind));
            let mut error = Diagnostic::error(
                diagnostic::UNKNOWN_TYPE,
                ty.span,
                format!("unknown type `{keyword}{name}`"),
            )
            .label("not in the kernel's debuginfo");
            if let Some(similar) = closest(name, candidates.iter().map(String::as_str)) {
                error = error.help(format!("did you mean `{keyword}{similar}`?"));
            }
            return self.fail(error);
        };
        Ok(wrap_pointers(from_kernel(resolver, id), ty.pointers))
    }

    fn cast(&mut self, ty: &ast::TypeExpr, operand: &Expr, span: Span, depth: usize) -> R<Val> {
        let target = self.resolve_type(ty)?;
        match &target {
            Type::Int { bytes, signed } => {
                let found = self.scalar(operand, depth)?;
                self.reject_symbol(&found, operand.span)?;
                self.b().narrow(reg(depth), *bytes, *signed);
                Ok(Val::Scalar(target))
            }
            Type::Bool => {
                self.scalar(operand, depth)?;
                self.truth(Cond::Ne, depth, None);
                Ok(Val::Scalar(Type::Bool))
            }
            Type::Pointer(_) => {
                let found = self.scalar(operand, depth)?;
                self.reject_symbol(&found, operand.span)?;
                Ok(Val::Scalar(target))
            }
            Type::Record { .. } | Type::Array { .. } => match self.expr(operand, depth)? {
                Val::Place(_) => Ok(Val::Place(target)),
                _ => self.fail(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        span,
                        format!("only kernel memory can be viewed as `{target}`"),
                    )
                    .label("not in kernel memory")
                    .help(format!(
                        "cast the address to a pointer: `({} *)address`",
                        ty.text()
                    )),
                ),
            },
            _ => self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    ty.span,
                    format!("cannot cast to `{target}`"),
                )
                .label("not a value type"),
            ),
        }
    }

    fn reject_symbol(&mut self, ty: &Type, span: Span) -> R<()> {
        if matches!(
            ty,
            Type::Int { .. } | Type::Bool | Type::Pointer(_) | Type::Symbol | Type::Syscall
        ) {
            Ok(())
        } else {
            self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    span,
                    format!("cannot cast `{ty}`"),
                )
                .label("not a number"),
            )
        }
    }

    fn member(&mut self, base: &Expr, member: &ast::Ident, arrow: bool, depth: usize) -> R<Val> {
        let val = self.expr(base, depth)?;
        let record = if arrow {
            let pointer = match val {
                Val::Scalar(ty) => ty,
                Val::Place(Type::Pointer(target)) => {
                    self.read_place(&Type::Pointer(target.clone()), depth, base.span)?;
                    Type::Pointer(target)
                }
                Val::Place(ty @ Type::Record { .. }) => {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_POINTER,
                            base.span,
                            format!("`->` needs a pointer, and this is a `{ty}`"),
                        )
                        .label("a struct, not a pointer to one")
                        .help(format!("use `.`: `.{}`", member.name)),
                    );
                }
                Val::Place(ty) | Val::Buf { ty, .. } => ty,
                Val::Void => return self.no_value(base),
            };
            match pointer {
                Type::Pointer(target) if matches!(*target, Type::Record { .. }) => *target,
                other => {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_POINTER,
                            base.span,
                            format!("`->` needs a pointer to a struct, and this is a `{other}`"),
                        )
                        .label("no members to read")
                        .help("cast it first: `((struct name *)pointer)->member`"),
                    );
                }
            }
        } else {
            match val {
                Val::Place(ty @ Type::Record { .. }) => ty,
                Val::Scalar(Type::Pointer(target)) | Val::Place(Type::Pointer(target))
                    if matches!(*target, Type::Record { .. }) =>
                {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_STRUCT,
                            base.span,
                            format!("`.` reads a member of a struct, and this is a `{target} *`"),
                        )
                        .label("a pointer")
                        .help(format!("use `->`: `->{}`", member.name)),
                    );
                }
                Val::Scalar(ty) | Val::Place(ty) | Val::Buf { ty, .. } => {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::NOT_A_STRUCT,
                            base.span,
                            format!("`{ty}` has no members"),
                        )
                        .label("not a struct or union"),
                    );
                }
                Val::Void => return self.no_value(base),
            }
        };
        let Type::Record { id, name, .. } = &record else {
            unreachable!("records only")
        };
        match find_member(self.cx.resolver, *id, &member.name) {
            Ok(found) => {
                if let Some((bit, bits)) = found.bitfield {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::UNSUPPORTED_TYPE,
                            member.span,
                            format!("`{}` is a bitfield ({bits} bits at bit {bit})", member.name),
                        )
                        .label("bitfields cannot be read yet")
                        .help("read the containing bytes through a cast and mask them"),
                    );
                }
                add_offset(self.b(), reg(depth), found.offset as i64);
                Ok(Val::Place(found.ty))
            }
            Err(names) => {
                let mut error = Diagnostic::error(
                    diagnostic::UNKNOWN_MEMBER,
                    member.span,
                    format!("`{name}` has no member `{}`", member.name),
                )
                .label("unknown member");
                if let Some(similar) = closest(&member.name, names.iter().map(String::as_str)) {
                    error = error.help(format!("did you mean `{similar}`?"));
                }
                if !names.is_empty() {
                    error = error.note(format!("members: {}", names.join(", ")));
                }
                self.fail(error)
            }
        }
    }

    fn index(&mut self, base: &Expr, index: &Expr, span: Span, depth: usize) -> R<Val> {
        let val = self.expr(base, depth)?;
        let (element, count) = match val {
            Val::Place(Type::Array { element, count }) => (*element, Some(count)),
            Val::Place(Type::Pointer(target)) => {
                self.read_place(&Type::Pointer(target.clone()), depth, base.span)?;
                (*target, None)
            }
            Val::Scalar(Type::Pointer(target)) => (*target, None),
            Val::Scalar(ty) | Val::Place(ty) | Val::Buf { ty, .. } => {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::NOT_INDEXABLE,
                        base.span,
                        format!("`{ty}` cannot be indexed"),
                    )
                    .label("not an array or pointer"),
                );
            }
            Val::Void => return self.no_value(base),
        };
        let size = element.size();
        if size == 0 {
            return self.fail(
                Diagnostic::error(
                    diagnostic::NOT_INDEXABLE,
                    base.span,
                    format!("elements of `{element}` have no size"),
                )
                .label("cannot step through these")
                .help("cast to a pointer to a sized type first"),
            );
        }
        if let Some(constant) = const_int(index) {
            if let Some(count) = count
                && count > 0
                && (constant < 0 || constant as u64 >= count)
            {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::NOT_INDEXABLE,
                        index.span,
                        format!("index {constant} is out of bounds"),
                    )
                    .label(format!("the array has {count} elements")),
                );
            }
            add_offset(self.b(), reg(depth), constant.wrapping_mul(size as i64));
            return Ok(Val::Place(element));
        }
        let (index_type, register) = self.with_rhs(depth, index)?;
        self.require_number(&index_type, index.span, "an index")?;
        let _ = span;
        let b = self.b();
        if size > 1 {
            b.alu_imm(op::MUL, register, size as i32);
        }
        b.alu_reg(op::ADD, reg(depth), register, false);
        Ok(Val::Place(element))
    }

    // ----- maps -----

    fn map_name(name: &ast::Ident) -> String {
        format!("@{}", name.name)
    }

    /// Builds the key of `map` from `keys` in a stack slot.
    fn map_key(&mut self, map: usize, keys: &[Expr], span: Span, depth: usize) -> R<Slot> {
        if keys.is_empty() {
            if let Some(known) = self.cx.maps[map].key.clone()
                && !known.is_empty()
            {
                return self.key_mismatch(map, span, "no key".to_string(), &known);
            }
            self.cx.maps[map].key = Some(Vec::new());
            let slot = self.temp(8, span)?;
            self.b().store_imm(slot.offset, 0);
            return Ok(slot);
        }
        // Lower each key to a scalar in a slot or a buffer.
        let mut parts = Vec::new();
        for key in keys {
            let val = self.value(key, depth)?;
            match val {
                Val::Scalar(ty) => {
                    let value_type = ty.value_type().expect("scalars have a value type");
                    let slot = self.temp(8, key.span)?;
                    self.b().store(8, FP, slot.offset, reg(depth));
                    parts.push((value_type, slot, ty));
                }
                Val::Buf { slot, ty, .. } => {
                    let value_type = ty.value_type().expect("buffers have a value type");
                    parts.push((value_type, slot, ty));
                }
                Val::Void => return self.no_value(key),
                Val::Place(_) => unreachable!("value() reads places"),
            }
        }
        let found: Vec<ValueType> = parts.iter().map(|(value_type, _, _)| *value_type).collect();
        let layout = match self.cx.maps[map].key.clone() {
            None => {
                self.cx.maps[map].key = Some(found.clone());
                self.cx.maps[map].key_span = span;
                found.clone()
            }
            Some(known) => known,
        };
        let compatible = layout.len() == found.len()
            && layout
                .iter()
                .zip(&found)
                .all(|(want, have)| match (want, have) {
                    (ValueType::Str { size: want }, ValueType::Str { size: have }) => have <= want,
                    (ValueType::Stack { depth: want }, ValueType::Stack { depth: have }) => {
                        want == have
                    }
                    (ValueType::Str { .. } | ValueType::Stack { .. }, _)
                    | (_, ValueType::Str { .. } | ValueType::Stack { .. }) => false,
                    _ => true,
                });
        if !compatible {
            let shown = describe_types(
                &found
                    .iter()
                    .map(|ty| Type::from_value_type(*ty))
                    .collect::<Vec<_>>(),
            );
            return self.key_mismatch(map, span, shown, &layout);
        }
        let key_size: u16 = layout.iter().map(|ty| ty.padded_size()).sum();
        if key_size > probe_port_protocol::maps::MAX_KEY_SIZE {
            let name = self.cx.maps[map].name.clone();
            return self.fail(
                Diagnostic::error(
                    diagnostic::KEY_TOO_LARGE,
                    span,
                    format!("the key of `{name}` is {key_size} bytes, above the limit of 256"),
                )
                .label("this key")
                .help("use shorter strings (`str(p, 32)`) or fewer key parts"),
            );
        }
        let buffer = self.temp(key_size, span)?;
        let mut offset = 0u16;
        for ((want, (_, slot, _)), _) in layout.iter().zip(&parts).zip(keys) {
            let destination = Slot {
                offset: buffer.at(offset),
                words: (want.padded_size() / 8) as u8,
            };
            self.copy_padded(destination, *slot);
            offset += want.padded_size();
        }
        Ok(buffer)
    }

    fn key_mismatch<T>(
        &mut self,
        map: usize,
        span: Span,
        found: String,
        known: &[ValueType],
    ) -> R<T> {
        let state = &self.cx.maps[map];
        let expected = describe_types(
            &known
                .iter()
                .map(|ty| Type::from_value_type(*ty))
                .collect::<Vec<_>>(),
        );
        let (name, first) = (state.name.clone(), state.key_span);
        self.fail(
            Diagnostic::error(
                diagnostic::MAP_KEY_MISMATCH,
                span,
                format!("`{name}` is keyed by {expected}, not {found}"),
            )
            .label(format!("keys: {found}"))
            .secondary(first, format!("keys fixed here: {expected}")),
        )
    }

    fn map_read(&mut self, name: &ast::Ident, keys: &[Expr], span: Span, depth: usize) -> R<Val> {
        let map = self.cx.map_index(&Self::map_name(name), name.span);
        let value = self.cx.maps[map].value.clone();
        let ty = match value {
            Some(MapValueState::Aggregate(_)) => {
                let map_name = self.cx.maps[map].name.clone();
                return self.fail(
                    Diagnostic::error(
                        diagnostic::MISPLACED_AGGREGATION,
                        span,
                        format!("`{map_name}` is an aggregation and cannot be read in a probe"),
                    )
                    .label("aggregations are kept per CPU and merged by the client")
                    .help(format!("print it with print({map_name})")),
                );
            }
            Some(MapValueState::Value(ty)) => ty,
            // Never assigned: reported once for the map by the driver.
            None => U64,
        };
        let key = self.map_key(map, keys, span, depth + 1)?;
        let value_type = ty.value_type().unwrap_or(ValueType::Unsigned);
        let slot = self.temp(value_type.padded_size(), span)?;
        let b = self.b();
        b.zero(slot.offset, u16::from(slot.words));
        b.mov_imm(1, map as i64);
        b.stack_pointer(2, key.offset);
        b.stack_pointer(3, slot.offset);
        b.call(Helper::MapLookup);
        if ty.is_scalar() {
            b.load(8, false, reg(depth), FP, slot.offset);
            Ok(Val::Scalar(ty))
        } else {
            Ok(Val::Buf {
                slot,
                ty,
                temp: true,
            })
        }
    }

    fn map_assign(
        &mut self,
        name: &ast::Ident,
        keys: &[Expr],
        operator: Option<BinaryOp>,
        value: &Expr,
        span: Span,
    ) -> R<()> {
        let map = self.cx.map_index(&Self::map_name(name), name.span);
        if let ExprKind::Call {
            name: function,
            args,
        } = &value.kind
            && AGGREGATIONS.contains(&function.name.as_str())
        {
            if operator.is_some() {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::MISPLACED_AGGREGATION,
                        value.span,
                        "an aggregation is assigned with `=`",
                    )
                    .label("not with a compound operator"),
                );
            }
            return self.aggregate(map, keys, function, args, value.span, span);
        }
        if let Some(MapValueState::Aggregate(kind)) = self.cx.maps[map].value.clone() {
            let map_name = self.cx.maps[map].name.clone();
            let first = self.cx.maps[map].value_span;
            return self.fail(
                Diagnostic::error(
                    diagnostic::MAP_VALUE_MISMATCH,
                    span,
                    format!("`{map_name}` holds a {} aggregation", aggregate_name(kind)),
                )
                .label("assigned a plain value here")
                .secondary(first, "made an aggregation here")
                .help(match operator {
                    Some(BinaryOp::Add) => {
                        format!("to add up values, write `{map_name}[...] = sum(value)`")
                    }
                    _ => "a map holds either plain values or one aggregation".to_string(),
                }),
            );
        }
        let (key, value_slot, ty) = match operator {
            None => {
                let val = self.value(value, 0)?;
                let (ty, source) = match val {
                    Val::Scalar(ty) => (ty, None),
                    Val::Buf { slot, ty, .. } => (ty, Some(slot)),
                    Val::Void => return self.no_value(value),
                    Val::Place(_) => unreachable!("value() reads places"),
                };
                let stored = self.map_value_type(map, &ty, value.span)?;
                let key = self.map_key(map, keys, span, 1)?;
                let value_type = stored.value_type().unwrap_or(ValueType::Unsigned);
                let slot = self.temp(value_type.padded_size(), value.span)?;
                match source {
                    None => self.b().store(8, FP, slot.offset, reg(0)),
                    Some(source) => self.copy_padded(slot, source),
                }
                (key, slot, stored)
            }
            Some(op) => {
                let key = self.map_key(map, keys, span, 0)?;
                let current = match self.cx.maps[map].value.clone() {
                    Some(MapValueState::Value(ty)) => ty,
                    _ => I64,
                };
                if !current.is_scalar() {
                    let map_name = self.cx.maps[map].name.clone();
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::TYPE_MISMATCH,
                            span,
                            format!("`{map_name}` holds `{current}`, not numbers"),
                        )
                        .label(format!("`{}=` needs a number", op.symbol())),
                    );
                }
                let slot = self.temp(8, span)?;
                let b = self.b();
                b.store_imm(slot.offset, 0);
                b.mov_imm(1, map as i64);
                b.stack_pointer(2, key.offset);
                b.stack_pointer(3, slot.offset);
                b.call(Helper::MapLookup);
                b.load(8, false, reg(0), FP, slot.offset);
                let ty = self.arithmetic(op, current.clone(), false, value, span, 0)?;
                let stored = self.map_value_type(map, &ty, value.span)?;
                self.b().store(8, FP, slot.offset, reg(0));
                (key, slot, stored)
            }
        };
        let _ = ty;
        let b = self.b();
        b.mov_imm(1, map as i64);
        b.stack_pointer(2, key.offset);
        b.stack_pointer(3, value_slot.offset);
        b.call(Helper::MapUpdate);
        Ok(())
    }

    /// Fixes or checks the value type of a plain map; returns the stored type.
    fn map_value_type(&mut self, map: usize, ty: &Type, span: Span) -> R<Type> {
        match self.cx.maps[map].value.clone() {
            None => {
                self.cx.maps[map].value = Some(MapValueState::Value(ty.clone()));
                self.cx.maps[map].value_span = span;
                Ok(ty.clone())
            }
            Some(MapValueState::Value(stored)) => {
                let fits = match (&stored, ty) {
                    (stored, ty) if stored.is_scalar() && ty.is_scalar() => true,
                    (Type::Str(have), Type::Str(new)) => new <= have,
                    (a, b) => a == b,
                };
                if fits {
                    return Ok(stored);
                }
                let map_name = self.cx.maps[map].name.clone();
                let first = self.cx.maps[map].value_span;
                self.fail(
                    Diagnostic::error(
                        diagnostic::MAP_VALUE_MISMATCH,
                        span,
                        format!("`{map_name}` holds `{stored}`, and this is `{ty}`"),
                    )
                    .label(format!("expected `{stored}`"))
                    .secondary(first, "value type fixed here"),
                )
            }
            Some(MapValueState::Aggregate(_)) => unreachable!("checked by the caller"),
        }
    }

    fn aggregate(
        &mut self,
        map: usize,
        keys: &[Expr],
        function: &ast::Ident,
        args: &[Expr],
        call_span: Span,
        span: Span,
    ) -> R<()> {
        let name = function.name.as_str();
        let expected_args = match name {
            "count" => 0,
            "lhist" => 4,
            _ => 1,
        };
        let placeholder = match name {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum,
            "min" => AggregateKind::Min,
            "max" => AggregateKind::Max,
            "avg" => AggregateKind::Avg,
            "stats" => AggregateKind::Stats,
            "hist" => AggregateKind::Log2Hist,
            _ => AggregateKind::LinearHist {
                min: 0,
                max: 1,
                step: 1,
            },
        };
        // A map whose aggregation is wrong is still an aggregation: no second error
        // saying it is never assigned.
        if self.cx.maps[map].value.is_none() {
            self.cx.maps[map].value = Some(MapValueState::Aggregate(placeholder));
            self.cx.maps[map].value_span = call_span;
        }
        if args.len() != expected_args {
            self.cx.arity(call_span, name, expected_args, args.len());
            return Err(Reported);
        }
        let kind = match name {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum,
            "min" => AggregateKind::Min,
            "max" => AggregateKind::Max,
            "avg" => AggregateKind::Avg,
            "stats" => AggregateKind::Stats,
            "hist" => AggregateKind::Log2Hist,
            _ => {
                let Some(min) = const_int(&args[1]) else {
                    return self
                        .constant_argument(&args[1], "the minimum of `lhist`", i64::MIN..=i64::MAX)
                        .map(|_| ());
                };
                let Some(max) = const_int(&args[2]) else {
                    return self
                        .constant_argument(&args[2], "the maximum of `lhist`", i64::MIN..=i64::MAX)
                        .map(|_| ());
                };
                let Some(step) = const_int(&args[3]) else {
                    return self
                        .constant_argument(&args[3], "the step of `lhist`", 1..=i64::MAX)
                        .map(|_| ());
                };
                if step < 1 || AggregateKind::linear_buckets(min, max, step as u64).is_none() {
                    return self.fail(
                        Diagnostic::error(
                            diagnostic::BAD_HISTOGRAM,
                            call_span,
                            format!("lhist({min}, {max}, {step}) has no usable buckets"),
                        )
                        .label("needs min < max, step >= 1 and at most 1024 buckets"),
                    );
                }
                AggregateKind::LinearHist {
                    min,
                    max,
                    step: step as u64,
                }
            }
        };
        match self.cx.maps[map].value.clone() {
            None => {
                self.cx.maps[map].value = Some(MapValueState::Aggregate(kind));
                self.cx.maps[map].value_span = call_span;
            }
            Some(MapValueState::Aggregate(existing)) if existing == kind => {}
            Some(MapValueState::Aggregate(existing))
                if existing == placeholder && self.cx.maps[map].value_span == call_span =>
            {
                self.cx.maps[map].value = Some(MapValueState::Aggregate(kind));
            }
            Some(existing) => {
                let map_name = self.cx.maps[map].name.clone();
                let first = self.cx.maps[map].value_span;
                let was = match existing {
                    MapValueState::Aggregate(kind) => {
                        format!("a {} aggregation", aggregate_name(kind))
                    }
                    MapValueState::Value(ty) => format!("plain `{ty}` values"),
                };
                return self.fail(
                    Diagnostic::error(
                        diagnostic::MAP_VALUE_MISMATCH,
                        call_span,
                        format!("`{map_name}` holds {was}, not {}", aggregate_name(kind)),
                    )
                    .label("a different aggregation")
                    .secondary(first, "fixed here")
                    .help("use one map per aggregation"),
                );
            }
        }
        if expected_args > 0 {
            let ty = self.scalar(&args[0], 0)?;
            self.require_number(&ty, args[0].span, &format!("`{name}`"))?;
        } else {
            self.b().mov_imm(reg(0), 0);
        }
        let key = self.map_key(map, keys, span, 1)?;
        let b = self.b();
        b.mov_imm(1, map as i64);
        b.stack_pointer(2, key.offset);
        b.mov_reg(3, reg(0));
        b.call(Helper::Aggregate);
        Ok(())
    }

    fn delete(&mut self, span: Span, args: &[Expr]) -> R<()> {
        if args.len() != 1 {
            self.cx.arity(span, "delete", 1, args.len());
            return Err(Reported);
        }
        let ExprKind::Map { name, keys } = &args[0].kind else {
            return self.fail(
                Diagnostic::error(
                    diagnostic::TYPE_MISMATCH,
                    args[0].span,
                    "`delete` takes a map entry",
                )
                .label("expected `@map[key]`"),
            );
        };
        let map = self.cx.map_index(&Self::map_name(name), name.span);
        if let Some(MapValueState::Aggregate(_)) = self.cx.maps[map].value {
            let map_name = self.cx.maps[map].name.clone();
            return self.fail(
                Diagnostic::error(
                    diagnostic::MISPLACED_AGGREGATION,
                    args[0].span,
                    format!(
                        "`{map_name}` is an aggregation; its entries cannot be deleted one by one"
                    ),
                )
                .label("an aggregation")
                .help(format!(
                    "reset the whole aggregation with clear({map_name})"
                )),
            );
        }
        let key = self.map_key(map, keys, args[0].span, 0)?;
        let b = self.b();
        b.mov_imm(1, map as i64);
        b.stack_pointer(2, key.offset);
        b.call(Helper::MapDelete);
        Ok(())
    }

    // ----- records -----

    fn action_record(&mut self, kind: RecordKind, span: Span) -> R<()> {
        let id = self.cx.record(kind, Vec::new(), 8);
        let slot = self.temp(8, span)?;
        let b = self.b();
        b.store_imm(slot.offset, id as i32);
        b.stack_pointer(1, slot.offset);
        b.mov_imm(2, 8);
        b.call(Helper::Emit);
        Ok(())
    }

    fn printf(&mut self, span: Span, args: &[Expr]) -> R<()> {
        let (pieces, format_span) = self.cx.format_argument(span, args).ok_or(Reported)?;
        let conversions: Vec<_> = pieces
            .iter()
            .filter_map(|piece| match piece {
                RawPiece::Conversion(spec, text) => Some((spec.clone(), text.clone())),
                RawPiece::Text(_) => None,
            })
            .collect();
        if conversions.len() != args.len() - 1 {
            self.cx
                .format_count(format_span, conversions.len(), args.len() - 1);
            return Err(Reported);
        }
        // Lower each argument into a slot (or several, for `$$parms`).
        struct Argument {
            ty: Option<Type>,
            fields: Vec<(ValueType, Slot, Option<String>)>,
            span: Span,
        }
        let mut lowered = Vec::new();
        let mut failed = false;
        for arg in &args[1..] {
            let result = if matches!(arg.kind, ExprKind::Parms) {
                self.parms(arg.span).map(|fields| Argument {
                    ty: None,
                    fields,
                    span: arg.span,
                })
            } else {
                self.value(arg, 0).and_then(|val| match val {
                    Val::Scalar(ty) => {
                        let slot = self.temp(8, arg.span)?;
                        self.b().store(8, FP, slot.offset, reg(0));
                        let value_type = ty.value_type().expect("scalars have a value type");
                        Ok(Argument {
                            ty: Some(ty),
                            fields: vec![(value_type, slot, None)],
                            span: arg.span,
                        })
                    }
                    Val::Buf { slot, ty, .. } => {
                        let value_type = ty.value_type().expect("buffers have a value type");
                        Ok(Argument {
                            ty: Some(ty),
                            fields: vec![(value_type, slot, None)],
                            span: arg.span,
                        })
                    }
                    Val::Void => self.no_value(arg),
                    Val::Place(_) => unreachable!("value() reads places"),
                })
            };
            match result {
                Ok(argument) => lowered.push(argument),
                Err(Reported) => failed = true,
            }
        }
        if failed {
            return Err(Reported);
        }
        for ((spec, text), argument) in conversions.iter().zip(&lowered) {
            if let Some(problem) = conversion_problem(spec.kind, argument.ty.as_ref()) {
                let found = argument
                    .ty
                    .as_ref()
                    .map_or("$$parms".to_string(), ToString::to_string);
                self.cx.error(
                    Diagnostic::error(
                        diagnostic::FORMAT_MISMATCH,
                        argument.span,
                        format!("`{text}` cannot print a `{found}`"),
                    )
                    .label(format!("this is a `{found}`"))
                    .secondary(format_span, format!("`{text}` in this format"))
                    .help(problem),
                );
                failed = true;
            }
        }
        if failed {
            return Err(Reported);
        }
        // Lay the record out: the record number, then every field.
        let mut fields = Vec::new();
        let mut offset = 8u16;
        let mut argument_fields = Vec::new();
        for argument in &lowered {
            let mut indices = Vec::new();
            for (value_type, _, name) in &argument.fields {
                indices.push(fields.len());
                fields.push(Field {
                    offset,
                    ty: *value_type,
                    name: name.clone(),
                });
                offset += value_type.padded_size();
            }
            argument_fields.push(indices);
        }
        let size = offset;
        if usize::from(size) > probe_port_protocol::isa::STACK_SIZE {
            return self.stack_exhausted(span);
        }
        let mut format_pieces = Vec::new();
        let mut next = argument_fields.into_iter();
        for piece in pieces {
            match piece {
                RawPiece::Text(text) => format_pieces.push(FormatPiece::Text(text)),
                RawPiece::Conversion(spec, _) => format_pieces.push(FormatPiece::Value {
                    spec,
                    fields: next.next().expect("counted above"),
                }),
            }
        }
        let record = self.temp(size, span)?;
        let id = self
            .cx
            .record(RecordKind::Printf(format_pieces), fields.clone(), size);
        self.b().store_imm(record.offset, id as i32);
        let sources: Vec<(ValueType, Slot)> = lowered
            .iter()
            .flat_map(|argument| argument.fields.iter().map(|(ty, slot, _)| (*ty, *slot)))
            .collect();
        for (field, (value_type, source)) in fields.iter().zip(sources) {
            let destination = Slot {
                offset: record.at(field.offset),
                words: (value_type.padded_size() / 8) as u8,
            };
            self.copy_padded(destination, source);
        }
        let b = self.b();
        b.stack_pointer(1, record.offset);
        b.mov_imm(2, i64::from(size));
        b.call(Helper::Emit);
        Ok(())
    }

    /// The fields of `$$parms`: every parameter (marker argument) that can be read.
    fn parms(&mut self, span: Span) -> R<Vec<(ValueType, Slot, Option<String>)>> {
        let names: Vec<String> = match &self.site.kind {
            SiteKind::Timer { .. } => {
                return self.fail(
                    Diagnostic::error(
                        diagnostic::NO_CONTEXT,
                        span,
                        "timer probes have no parameters",
                    )
                    .label("`$$parms` is empty here"),
                );
            }
            SiteKind::Marker(marker) => marker.args.iter().map(|arg| arg.name.clone()).collect(),
            SiteKind::User { args, .. } => args.iter().map(|arg| arg.name.clone()).collect(),
            SiteKind::Symbol { function: None, .. } => Vec::new(),
            SiteKind::Code { .. } | SiteKind::Return { .. } | SiteKind::Symbol { .. } => {
                let return_site = matches!(
                    self.site.kind,
                    SiteKind::Return { .. }
                        | SiteKind::Symbol {
                            is_return: true,
                            ..
                        }
                );
                let variables = if self.in_entry || !return_site {
                    self.variables()?
                } else {
                    // Parameters of a return site are the entry's.
                    self.in_entry = true;
                    let variables = self.variables();
                    self.in_entry = false;
                    variables?
                };
                let mut names = Vec::new();
                for variable in variables
                    .iter()
                    .filter(|variable| variable.kind == VariableKind::Parameter)
                {
                    let ty = from_kernel(self.cx.resolver, variable.ty);
                    let readable = ty.is_scalar()
                        && !matches!(variable.location, Location::Unavailable(_))
                        && !(matches!(variable.location, Location::EntryValue(_))
                            && !self.at_entry()
                            && !return_site);
                    if readable {
                        names.push(variable.name.clone());
                    } else {
                        self.cx.error(
                            Diagnostic::warning(
                                diagnostic::PARAMETER_LEFT_OUT,
                                span,
                                format!(
                                    "`$$parms` leaves out `{}` at {}",
                                    variable.name, self.site.description
                                ),
                            )
                            .label("one parameter is not readable here"),
                        );
                    }
                }
                names
            }
        };
        let mut fields = Vec::new();
        for name in names {
            let val = self.context(&name, span, 0)?;
            let ty = self.read_scalar(val, span, 0)?;
            let slot = self.temp(8, span)?;
            self.b().store(8, FP, slot.offset, reg(0));
            fields.push((
                ty.value_type().expect("scalars have a value type"),
                slot,
                Some(name),
            ));
        }
        Ok(fields)
    }
}

/// The jump condition of a comparison operator.
fn comparison(op: BinaryOp, signed: bool) -> Cond {
    match (op, signed) {
        (BinaryOp::Eq, _) => Cond::Eq,
        (BinaryOp::Ne, _) => Cond::Ne,
        (BinaryOp::Lt, false) => Cond::Lt,
        (BinaryOp::Le, false) => Cond::Le,
        (BinaryOp::Gt, false) => Cond::Gt,
        (BinaryOp::Ge, false) => Cond::Ge,
        (BinaryOp::Lt, true) => Cond::SignedLt,
        (BinaryOp::Le, true) => Cond::SignedLe,
        (BinaryOp::Gt, true) => Cond::SignedGt,
        (BinaryOp::Ge, true) => Cond::SignedGe,
        _ => unreachable!("comparisons only"),
    }
}

/// What is wrong with printing `ty` with the conversion `kind`, if anything.
fn conversion_problem(kind: char, ty: Option<&Type>) -> Option<String> {
    let Some(ty) = ty else {
        return (kind != 's').then(|| "`$$parms` prints with `%s`".to_string());
    };
    let char_pointer =
        matches!(ty, Type::Pointer(target) if matches!(**target, Type::Int { bytes: 1, .. }));
    match kind {
        's' if char_pointer => {
            Some("this would print the pointer; read the string with str(...)".to_string())
        }
        's' => None,
        'd' | 'i' | 'u' | 'x' | 'X' | 'o' => match ty {
            Type::Int { .. } | Type::Bool | Type::Pointer(_) | Type::Syscall => None,
            Type::Symbol if matches!(kind, 'x' | 'X') => None,
            _ => Some("print it with `%s`".to_string()),
        },
        'p' => match ty {
            Type::Int { .. } | Type::Pointer(_) | Type::Symbol => None,
            _ => Some("`%p` prints addresses".to_string()),
        },
        'c' => match ty {
            Type::Int { .. } => None,
            _ => Some("`%c` prints one character from an integer".to_string()),
        },
        _ => Some("unknown conversion".to_string()),
    }
}

fn marker_type(ty: ArgType) -> Type {
    let int = |bytes, signed| Type::Int { bytes, signed };
    match ty {
        ArgType::U8 => int(1, false),
        ArgType::U16 => int(2, false),
        ArgType::U32 => int(4, false),
        ArgType::U64 => int(8, false),
        ArgType::I8 => int(1, true),
        ArgType::I16 => int(2, true),
        ArgType::I32 => int(4, true),
        ArgType::I64 => int(8, true),
        ArgType::Bool => Type::Bool,
        ArgType::Pointer => Type::Pointer(Box::new(Type::Void)),
        ArgType::String => Type::Pointer(Box::new(int(1, true))),
    }
}

/// Narrows a register holding a value read as 64 bits to its type's width.
fn narrow_to(b: &mut Builder, ty: &Type, register: u8) {
    match ty {
        Type::Int { bytes, signed } => b.narrow(register, *bytes, *signed),
        Type::Bool => b.narrow(register, 1, false),
        _ => {}
    }
}

fn add_offset(b: &mut Builder, register: u8, offset: i64) {
    if offset == 0 {
        return;
    }
    match i32::try_from(offset) {
        Ok(imm) => b.alu_imm(op::ADD, register, imm),
        Err(_) => {
            b.mov_imm(0, offset);
            b.alu_reg(op::ADD, register, 0, false);
        }
    }
}

fn wrap_pointers(mut ty: Type, pointers: u8) -> Type {
    for _ in 0..pointers {
        ty = Type::Pointer(Box::new(ty));
    }
    ty
}

/// Whether `expr` is an integer literal that takes the signedness of the other
/// operand (literals above `i64::MAX` are plain `u64`s).
fn is_literal(expr: &Expr) -> bool {
    match &expr.kind {
        ExprKind::Int(value) => *value <= i64::MAX as u64,
        ExprKind::Unary {
            op: UnaryOp::Negate,
            operand,
        } => is_literal(operand),
        _ => false,
    }
}

/// An operation is signed when every operand that is not a literal is signed.
fn signed_operation(lhs: &Type, lhs_literal: bool, rhs: &Type, rhs_literal: bool) -> bool {
    (lhs_literal || lhs.is_signed()) && (rhs_literal || rhs.is_signed())
}

fn describe_types(types: &[Type]) -> String {
    let names: Vec<String> = types.iter().map(ToString::to_string).collect();
    format!("({})", names.join(", "))
}

fn aggregate_name(kind: AggregateKind) -> &'static str {
    match kind {
        AggregateKind::Count => "count()",
        AggregateKind::Sum => "sum()",
        AggregateKind::Min => "min()",
        AggregateKind::Max => "max()",
        AggregateKind::Avg => "avg()",
        AggregateKind::Stats => "stats()",
        AggregateKind::Log2Hist => "hist()",
        AggregateKind::LinearHist { .. } => "lhist()",
    }
}
