//! The syntax tree, with a span on every node, and its golden-file dump.

use std::fmt::Write;

use crate::source::Span;

/// A name and where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    /// The name (for `$x` and `@x`, without the sigil).
    pub name: String,
    /// Where.
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Script {
    /// Probes, functions and aliases, in source order.
    pub items: Vec<Item>,
}

/// A top-level definition.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `probe POINT, ... /PRED/ { ... }`
    Probe(Probe),
    /// `probe alias NAME = POINT, ... { ... }`
    Alias(Alias),
    /// `function NAME(PARAMS) { ... }`
    Function(Function),
}

/// A probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// Where it fires.
    pub points: Vec<ProbePoint>,
    /// Runs the body only when true.
    pub predicate: Option<Expr>,
    /// What it does.
    pub body: Block,
    /// From `probe` to the closing brace.
    pub span: Span,
}

/// A probe point: dotted components, such as `kernel.function("f").return`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbePoint {
    /// The components in order.
    pub components: Vec<Component>,
    /// The whole point.
    pub span: Span,
}

impl ProbePoint {
    /// The point as written, normalised (`kernel.function("f").return`).
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (index, component) in self.components.iter().enumerate() {
            if index > 0 {
                text.push('.');
            }
            text.push_str(&component.name.name);
            match &component.argument {
                Some(Literal::Str(value, _)) => {
                    let _ = write!(text, "({value:?})");
                }
                Some(Literal::Int(value, _)) => {
                    let _ = write!(text, "({value})");
                }
                None => {}
            }
        }
        text
    }

    /// The dotted name without arguments (`kernel.function.return`).
    pub fn dotted_name(&self) -> String {
        self.components
            .iter()
            .map(|component| component.name.name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// One component of a probe point.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    /// Its name.
    pub name: Ident,
    /// Its argument in parentheses, if any.
    pub argument: Option<Literal>,
}

/// A literal argument of a probe point component.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// A string.
    Str(String, Span),
    /// An integer.
    Int(u64, Span),
}

impl Literal {
    /// Where it is.
    pub fn span(&self) -> Span {
        match self {
            Literal::Str(_, span) | Literal::Int(_, span) => *span,
        }
    }
}

/// A named set of probe points with a prologue.
#[derive(Clone, Debug, PartialEq)]
pub struct Alias {
    /// The alias's dotted name.
    pub name: Vec<Ident>,
    /// What it stands for.
    pub points: Vec<ProbePoint>,
    /// Statements run before the body of every probe using the alias.
    pub body: Option<Block>,
    /// The whole definition.
    pub span: Span,
}

impl Alias {
    /// The dotted name.
    pub fn dotted_name(&self) -> String {
        self.name
            .iter()
            .map(|part| part.name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A script function (inlined at each call).
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Its name.
    pub name: Ident,
    /// Its parameters.
    pub params: Vec<Ident>,
    /// Its body.
    pub body: Block,
    /// The whole definition.
    pub span: Span,
}

/// `{ statements }`
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The statements.
    pub statements: Vec<Statement>,
    /// From brace to brace.
    pub span: Span,
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// What it is.
    pub kind: StatementKind,
    /// Where.
    pub span: Span,
}

/// The kinds of statement.
#[derive(Clone, Debug, PartialEq)]
pub enum StatementKind {
    /// `let name = value;`
    Let {
        /// The new local.
        name: Ident,
        /// Its first value.
        value: Expr,
    },
    /// `target = value;` or `target op= value;`
    Assign {
        /// A local or a map entry.
        target: Expr,
        /// `Some(op)` for `op=`.
        operator: Option<BinaryOp>,
        /// The value.
        value: Expr,
    },
    /// `if (condition) block [else statement]`
    If {
        /// The condition.
        condition: Expr,
        /// Run when true.
        then_block: Block,
        /// Run when false: a block or another `if`.
        else_branch: Option<Box<Statement>>,
    },
    /// `return [value];` (in functions)
    Return(Option<Expr>),
    /// An expression evaluated for its effect (`printf(...)`).
    Expr(Expr),
    /// A nested block.
    Block(Block),
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// An integer literal.
    Int(u64),
    /// A string literal (escapes decoded).
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// `$name`: a variable of the probed code, or `$return`.
    Context(String),
    /// `$$parms`.
    Parms,
    /// `@name[keys]`, `@name`, `@[keys]` (empty name).
    Map {
        /// The map's name without `@`.
        name: Ident,
        /// The key expressions (none for a scalar map).
        keys: Vec<Expr>,
    },
    /// `@entry(expr)`
    Entry(Box<Expr>),
    /// A local variable or builtin value (`cpu`, `tid`, ...).
    Name(String),
    /// `name(args)`: a builtin or script function.
    Call {
        /// The function's name.
        name: Ident,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// A prefix operator.
    Unary {
        /// Which.
        op: UnaryOp,
        /// Its operand.
        operand: Box<Expr>,
    },
    /// An infix operator.
    Binary {
        /// Which.
        op: BinaryOp,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `condition ? then : else`
    Conditional {
        /// The condition.
        condition: Box<Expr>,
        /// Value when true.
        then_value: Box<Expr>,
        /// Value when false.
        else_value: Box<Expr>,
    },
    /// `(type)expr`
    Cast {
        /// The target type.
        ty: TypeExpr,
        /// The operand.
        operand: Box<Expr>,
    },
    /// `base.member` or `base->member`
    Member {
        /// The struct (or pointer to it).
        base: Box<Expr>,
        /// The member.
        member: Ident,
        /// `->` rather than `.`.
        arrow: bool,
    },
    /// `base[index]`
    Index {
        /// The array or pointer.
        base: Box<Expr>,
        /// The index.
        index: Box<Expr>,
    },
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-`
    Negate,
    /// `!`
    Not,
    /// `~`
    BitNot,
    /// `*` (dereference)
    Deref,
    /// `&` (address of)
    AddressOf,
}

impl UnaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Negate => "-",
            UnaryOp::Not => "!",
            UnaryOp::BitNot => "~",
            UnaryOp::Deref => "*",
            UnaryOp::AddressOf => "&",
        }
    }
}

/// Infix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `&`
    BitAnd,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    /// `<<`
    Shl,
    /// `>>`
    Shr,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `&&`
    And,
    /// `||`
    Or,
}

impl BinaryOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::BitAnd => "&",
            BinaryOp::BitOr => "|",
            BinaryOp::BitXor => "^",
            BinaryOp::Shl => "<<",
            BinaryOp::Shr => ">>",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }

    /// Whether the result is a truth value.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
        )
    }
}

/// A type written in a cast, C style: `struct name *`, `u32`, `unsigned long`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeExpr {
    /// The named type.
    pub base: TypeName,
    /// How many `*` follow.
    pub pointers: u8,
    /// Where.
    pub span: Span,
}

/// The named part of a [`TypeExpr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeName {
    /// `struct NAME` (a path such as `demo_kernel::ipc::Message` is allowed).
    Struct(String),
    /// `union NAME`
    Union(String),
    /// `enum NAME`
    Enum(String),
    /// A built-in integer type: `u8` ... `i64`, `bool`, `char`, `int`, `unsigned long`, `void`.
    Builtin(Builtin),
    /// A typedef or base-type name from the kernel's debuginfo.
    Named(String),
}

/// The built-in scalar types of casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// An integer of `bytes` bytes.
    Int {
        /// 1, 2, 4 or 8.
        bytes: u8,
        /// Signed or not.
        signed: bool,
    },
    /// `bool`
    Bool,
    /// `void` (only behind a pointer).
    Void,
}

impl Builtin {
    /// The canonical spelling.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Int { bytes, signed } => match (bytes, signed) {
                (1, false) => "u8",
                (2, false) => "u16",
                (4, false) => "u32",
                (8, false) => "u64",
                (1, true) => "i8",
                (2, true) => "i16",
                (4, true) => "i32",
                _ => "i64",
            },
            Builtin::Bool => "bool",
            Builtin::Void => "void",
        }
    }
}

impl TypeExpr {
    /// The type as written, normalised.
    pub fn text(&self) -> String {
        let base = match &self.base {
            TypeName::Struct(name) => format!("struct {name}"),
            TypeName::Union(name) => format!("union {name}"),
            TypeName::Enum(name) => format!("enum {name}"),
            TypeName::Builtin(builtin) => builtin.name().to_string(),
            TypeName::Named(name) => name.clone(),
        };
        if self.pointers == 0 {
            base
        } else {
            format!("{base} {}", "*".repeat(self.pointers as usize))
        }
    }
}

// ---------------------------------------------------------------------------
// The dump used by the parser's golden files: one node per line, indented by
// depth, each with its byte range.

/// Writes the tree as indented text, one node per line with its byte range.
pub fn dump(script: &Script) -> String {
    let mut out = Dumper::default();
    out.line(0, "Script".to_string());
    for item in &script.items {
        out.item(1, item);
    }
    out.text
}

#[derive(Default)]
struct Dumper {
    text: String,
}

fn at(span: Span) -> String {
    format!("@{}..{}", span.start, span.end)
}

impl Dumper {
    fn line(&mut self, depth: usize, text: String) {
        for _ in 0..depth {
            self.text.push_str("  ");
        }
        self.text.push_str(&text);
        self.text.push('\n');
    }

    fn item(&mut self, depth: usize, item: &Item) {
        match item {
            Item::Probe(probe) => {
                self.line(depth, format!("Probe {}", at(probe.span)));
                for point in &probe.points {
                    self.line(
                        depth + 1,
                        format!("Point {} {}", point.text(), at(point.span)),
                    );
                }
                if let Some(predicate) = &probe.predicate {
                    self.line(depth + 1, "Predicate".to_string());
                    self.expr(depth + 2, predicate);
                }
                self.block(depth + 1, &probe.body);
            }
            Item::Alias(alias) => {
                let name = alias.dotted_name();
                self.line(depth, format!("Alias {name} {}", at(alias.span)));
                for point in &alias.points {
                    self.line(
                        depth + 1,
                        format!("Point {} {}", point.text(), at(point.span)),
                    );
                }
                if let Some(body) = &alias.body {
                    self.block(depth + 1, body);
                }
            }
            Item::Function(function) => {
                let params: Vec<&str> = function.params.iter().map(|p| p.name.as_str()).collect();
                self.line(
                    depth,
                    format!(
                        "Function {}({}) {}",
                        function.name.name,
                        params.join(", "),
                        at(function.span)
                    ),
                );
                self.block(depth + 1, &function.body);
            }
        }
    }

    fn block(&mut self, depth: usize, block: &Block) {
        self.line(depth, format!("Block {}", at(block.span)));
        for statement in &block.statements {
            self.statement(depth + 1, statement);
        }
    }

    fn statement(&mut self, depth: usize, statement: &Statement) {
        let span = at(statement.span);
        match &statement.kind {
            StatementKind::Let { name, value } => {
                self.line(depth, format!("Let {} {span}", name.name));
                self.expr(depth + 1, value);
            }
            StatementKind::Assign {
                target,
                operator,
                value,
            } => {
                let op = operator.map_or(String::new(), |op| op.symbol().to_string());
                self.line(depth, format!("Assign {op}= {span}"));
                self.expr(depth + 1, target);
                self.expr(depth + 1, value);
            }
            StatementKind::If {
                condition,
                then_block,
                else_branch,
            } => {
                self.line(depth, format!("If {span}"));
                self.expr(depth + 1, condition);
                self.block(depth + 1, then_block);
                if let Some(else_branch) = else_branch {
                    self.line(depth + 1, "Else".to_string());
                    self.statement(depth + 2, else_branch);
                }
            }
            StatementKind::Return(value) => {
                self.line(depth, format!("Return {span}"));
                if let Some(value) = value {
                    self.expr(depth + 1, value);
                }
            }
            StatementKind::Expr(expr) => {
                self.line(depth, format!("ExprStatement {span}"));
                self.expr(depth + 1, expr);
            }
            StatementKind::Block(block) => self.block(depth, block),
        }
    }

    fn expr(&mut self, depth: usize, expr: &Expr) {
        let span = at(expr.span);
        match &expr.kind {
            ExprKind::Int(value) => self.line(depth, format!("Int {value} {span}")),
            ExprKind::Str(value) => self.line(depth, format!("Str {value:?} {span}")),
            ExprKind::Bool(value) => self.line(depth, format!("Bool {value} {span}")),
            ExprKind::Context(name) => self.line(depth, format!("Context ${name} {span}")),
            ExprKind::Parms => self.line(depth, format!("Parms {span}")),
            ExprKind::Map { name, keys } => {
                self.line(depth, format!("Map @{} {span}", name.name));
                for key in keys {
                    self.expr(depth + 1, key);
                }
            }
            ExprKind::Entry(inner) => {
                self.line(depth, format!("Entry {span}"));
                self.expr(depth + 1, inner);
            }
            ExprKind::Name(name) => self.line(depth, format!("Name {name} {span}")),
            ExprKind::Call { name, args } => {
                self.line(depth, format!("Call {} {span}", name.name));
                for arg in args {
                    self.expr(depth + 1, arg);
                }
            }
            ExprKind::Unary { op, operand } => {
                self.line(depth, format!("Unary {} {span}", op.symbol()));
                self.expr(depth + 1, operand);
            }
            ExprKind::Binary { op, lhs, rhs } => {
                self.line(depth, format!("Binary {} {span}", op.symbol()));
                self.expr(depth + 1, lhs);
                self.expr(depth + 1, rhs);
            }
            ExprKind::Conditional {
                condition,
                then_value,
                else_value,
            } => {
                self.line(depth, format!("Conditional {span}"));
                self.expr(depth + 1, condition);
                self.expr(depth + 1, then_value);
                self.expr(depth + 1, else_value);
            }
            ExprKind::Cast { ty, operand } => {
                self.line(depth, format!("Cast ({}) {span}", ty.text()));
                self.expr(depth + 1, operand);
            }
            ExprKind::Member {
                base,
                member,
                arrow,
            } => {
                let op = if *arrow { "->" } else { "." };
                self.line(depth, format!("Member {op}{} {span}", member.name));
                self.expr(depth + 1, base);
            }
            ExprKind::Index { base, index } => {
                self.line(depth, format!("Index {span}"));
                self.expr(depth + 1, base);
                self.expr(depth + 1, index);
            }
        }
    }
}
