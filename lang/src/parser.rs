//! The parser: tokens to a [`Script`], by recursive descent.
//!
//! # Design
//!
//! Expressions use precedence climbing with C's levels. The one ambiguity of the
//! grammar is `/`: after the probe points, `/ expr /` is a predicate (as in DTrace),
//! so inside a predicate a bare `/` ends it; division there needs parentheses.
//! Casts are recognised by what follows `(`: `struct`, `union`, `enum`, a built-in
//! type name, or a name followed by `*`s and `)`.
//!
//! On a syntax error the parser reports it, skips to the end of the statement (or
//! of the item) and goes on, so one run shows every independent mistake.

use crate::ast::*;
use crate::diagnostic::{self, Diagnostic};
use crate::lexer::{Lexeme, Token, lex};
use crate::source::{FileId, Span};

/// Parses one file. The script is as complete as the errors allowed.
pub fn parse(file: FileId, text: &str) -> (Script, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let tokens = lex(file, text, &mut diagnostics);
    let mut parser = Parser {
        text,
        tokens,
        position: 0,
        diagnostics,
        no_slash: false,
        depth: 0,
        nodes: 0,
    };
    let script = parser.script();
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    for diagnostic in parser.diagnostics {
        if !diagnostics.contains(&diagnostic) {
            diagnostics.push(diagnostic);
        }
    }
    (script, diagnostics)
}

/// A syntax error was reported; the caller recovers.
struct Failed;

type Parse<T> = Result<T, Failed>;

/// Deepest nesting of expressions and blocks; deeper input is refused rather than
/// overflowing the stack of the parser or of the passes after it.
const MAX_DEPTH: usize = 64;

/// Most operators, member accesses and indexings in one top-level expression:
/// bounds the depth of left-nested chains such as `a + a + a ...`.
const MAX_NODES: usize = 256;

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Lexeme>,
    position: usize,
    diagnostics: Vec<Diagnostic>,
    /// Inside a predicate at parenthesis depth 0: `/` ends the predicate.
    no_slash: bool,
    depth: usize,
    /// Nodes built in the current top-level expression.
    nodes: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Token {
        self.tokens[self.position].token
    }

    fn peek_at(&self, ahead: usize) -> Token {
        self.tokens
            .get(self.position + ahead)
            .map_or(Token::Eof, |lexeme| lexeme.token)
    }

    fn span(&self) -> Span {
        self.tokens[self.position].span
    }

    fn previous_span(&self) -> Span {
        self.tokens[self.position.saturating_sub(1)].span
    }

    fn slice(&self, span: Span) -> &str {
        &self.text[span.range()]
    }

    fn bump(&mut self) -> Lexeme {
        let lexeme = self.tokens[self.position];
        if lexeme.token != Token::Eof {
            self.position += 1;
        }
        lexeme
    }

    fn eat(&mut self, token: Token) -> bool {
        if self.peek() == token {
            self.bump();
            true
        } else {
            false
        }
    }

    fn error_expected(&mut self, what: &str) -> Failed {
        let found = self.peek();
        let span = self.span();
        let mut error = Diagnostic::error(
            diagnostic::SYNTAX,
            span,
            format!("expected {what}, found {}", found.describe()),
        )
        .label(format!("expected {what}"));
        if found == Token::Ident && what.contains("`;`") {
            error = error.help("statements end with `;`");
        }
        if found == Token::Percent && what == "an expression" {
            error = error.help("registers are read with `reg(\"rdi\")`");
        }
        // Errors of the lexer already cover broken tokens.
        if found != Token::UnterminatedString {
            self.diagnostics.push(error);
        }
        Failed
    }

    fn expect(&mut self, token: Token) -> Parse<Lexeme> {
        if self.peek() == token {
            Ok(self.bump())
        } else {
            Err(self.error_expected(token.describe()))
        }
    }

    fn enter(&mut self) -> Parse<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.span();
            self.diagnostics.push(
                Diagnostic::error(diagnostic::SYNTAX, span, "nesting is too deep")
                    .label(format!("more than {MAX_DEPTH} levels of nesting")),
            );
            return Err(Failed);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn ident(&mut self, what: &str) -> Parse<Ident> {
        if self.peek() == Token::Ident {
            let lexeme = self.bump();
            Ok(Ident {
                name: self.slice(lexeme.span).to_string(),
                span: lexeme.span,
            })
        } else {
            Err(self.error_expected(what))
        }
    }

    // ----- items -----

    fn script(&mut self) -> Script {
        let mut items = Vec::new();
        while self.peek() != Token::Eof {
            let before = self.position;
            match self.item() {
                Ok(item) => items.push(item),
                Err(Failed) => self.recover_item(before),
            }
        }
        Script { items }
    }

    /// Skips to the next `probe` or `function` at brace depth 0.
    fn recover_item(&mut self, start: usize) {
        if self.position == start {
            self.bump();
        }
        let mut depth = 0usize;
        loop {
            match self.peek() {
                Token::Eof => return,
                Token::Probe | Token::Function if depth == 0 => return,
                Token::LBrace => depth += 1,
                Token::RBrace => {
                    if depth <= 1 {
                        self.bump();
                        if depth == 1 {
                            return;
                        }
                        continue;
                    }
                    depth -= 1;
                }
                _ => {}
            }
            self.bump();
        }
    }

    fn item(&mut self) -> Parse<Item> {
        match self.peek() {
            Token::Probe => {
                if self.peek_at(1) == Token::Alias {
                    self.alias().map(Item::Alias)
                } else {
                    self.probe().map(Item::Probe)
                }
            }
            Token::Function => self.function().map(Item::Function),
            _ => Err(self.error_expected("`probe` or `function`")),
        }
    }

    fn probe(&mut self) -> Parse<Probe> {
        let start = self.expect(Token::Probe)?.span;
        let points = self.points()?;
        let predicate = if self.eat(Token::Slash) {
            self.nodes = 0;
            let saved = self.no_slash;
            self.no_slash = true;
            let predicate = self.expr();
            self.no_slash = saved;
            let predicate = predicate?;
            self.expect(Token::Slash)?;
            Some(predicate)
        } else {
            None
        };
        if self.peek() != Token::LBrace {
            return Err(self.error_expected("`{`, `,` or a predicate `/ ... /`"));
        }
        let body = self.block()?;
        Ok(Probe {
            points,
            predicate,
            span: start.to(body.span),
            body,
        })
    }

    fn alias(&mut self) -> Parse<Alias> {
        let start = self.expect(Token::Probe)?.span;
        self.expect(Token::Alias)?;
        let mut name = vec![self.ident("an alias name")?];
        while self.eat(Token::Dot) {
            name.push(self.component_name()?);
        }
        self.expect(Token::Assign)?;
        let points = self.points()?;
        let body = if self.peek() == Token::LBrace {
            Some(self.block()?)
        } else {
            None
        };
        let end = body
            .as_ref()
            .map_or_else(|| self.previous_span(), |body| body.span);
        Ok(Alias {
            name,
            points,
            body,
            span: start.to(end),
        })
    }

    fn function(&mut self) -> Parse<Function> {
        let start = self.expect(Token::Function)?.span;
        let name = self.ident("a function name")?;
        self.expect(Token::LParen)?;
        let mut params = Vec::new();
        if self.peek() != Token::RParen {
            loop {
                params.push(self.ident("a parameter name")?);
                if !self.eat(Token::Comma) {
                    break;
                }
            }
        }
        self.expect(Token::RParen)?;
        let body = self.block()?;
        Ok(Function {
            name,
            params,
            span: start.to(body.span),
            body,
        })
    }

    fn points(&mut self) -> Parse<Vec<ProbePoint>> {
        let mut points = vec![self.point()?];
        while self.eat(Token::Comma) {
            points.push(self.point()?);
        }
        Ok(points)
    }

    /// Component names may be keywords: `kernel.function`, `.return`.
    fn component_name(&mut self) -> Parse<Ident> {
        match self.peek() {
            Token::Ident | Token::Function | Token::Return => {
                let lexeme = self.bump();
                Ok(Ident {
                    name: self.slice(lexeme.span).to_string(),
                    span: lexeme.span,
                })
            }
            _ => Err(self.error_expected("a probe point")),
        }
    }

    fn point(&mut self) -> Parse<ProbePoint> {
        let mut components = Vec::new();
        loop {
            let name = self.component_name()?;
            let argument = if self.eat(Token::LParen) {
                let literal = match self.peek() {
                    Token::String => {
                        let lexeme = self.bump();
                        Literal::Str(self.string_value(lexeme.span), lexeme.span)
                    }
                    Token::Integer => {
                        let lexeme = self.bump();
                        Literal::Int(self.integer_value(lexeme.span), lexeme.span)
                    }
                    _ => return Err(self.error_expected("a string or an integer")),
                };
                self.expect(Token::RParen)?;
                Some(literal)
            } else {
                None
            };
            components.push(Component { name, argument });
            if !self.eat(Token::Dot) {
                break;
            }
        }
        let span = components[0].name.span.to(self.previous_span());
        Ok(ProbePoint { components, span })
    }

    // ----- statements -----

    fn block(&mut self) -> Parse<Block> {
        self.enter()?;
        let result = self.block_inner();
        self.leave();
        result
    }

    fn block_inner(&mut self) -> Parse<Block> {
        let start = self.expect(Token::LBrace)?.span;
        let mut statements = Vec::new();
        loop {
            match self.peek() {
                Token::RBrace => break,
                Token::Eof => return Err(self.error_expected("`}`")),
                _ => {}
            }
            let before = self.position;
            match self.statement() {
                Ok(statement) => statements.push(statement),
                Err(Failed) => self.recover_statement(before),
            }
        }
        let end = self.expect(Token::RBrace)?.span;
        Ok(Block {
            statements,
            span: start.to(end),
        })
    }

    /// Skips past the next `;`, or up to the `}` closing the current block.
    fn recover_statement(&mut self, start: usize) {
        let mut depth = 0usize;
        if self.position == start && self.peek() != Token::RBrace {
            if self.peek() == Token::LBrace {
                depth += 1;
            }
            self.bump();
        }
        loop {
            match self.peek() {
                Token::Eof => return,
                Token::Semicolon if depth == 0 => {
                    self.bump();
                    return;
                }
                Token::RBrace if depth == 0 => return,
                Token::RBrace => depth -= 1,
                Token::LBrace => depth += 1,
                Token::Probe | Token::Function if depth == 0 => return,
                _ => {}
            }
            self.bump();
        }
    }

    /// A statement's terminating `;`, optional before `}`.
    fn end_of_statement(&mut self) -> Parse<()> {
        if self.eat(Token::Semicolon) || self.peek() == Token::RBrace {
            Ok(())
        } else {
            Err(self.error_expected("`;`"))
        }
    }

    fn statement(&mut self) -> Parse<Statement> {
        self.nodes = 0;
        let start = self.span();
        match self.peek() {
            Token::Let => {
                self.bump();
                let name = self.ident("a variable name")?;
                self.expect(Token::Assign)?;
                let value = self.expr()?;
                self.end_of_statement()?;
                Ok(Statement {
                    kind: StatementKind::Let { name, value },
                    span: start.to(self.previous_span()),
                })
            }
            Token::If => self.if_statement(),
            Token::Return => {
                self.bump();
                let value = if matches!(self.peek(), Token::Semicolon | Token::RBrace) {
                    None
                } else {
                    Some(self.expr()?)
                };
                self.end_of_statement()?;
                Ok(Statement {
                    kind: StatementKind::Return(value),
                    span: start.to(self.previous_span()),
                })
            }
            Token::LBrace => {
                let block = self.block()?;
                Ok(Statement {
                    span: block.span,
                    kind: StatementKind::Block(block),
                })
            }
            _ => {
                let target = self.expr()?;
                let operator = match self.peek() {
                    Token::Assign => Some(None),
                    Token::PlusAssign => Some(Some(BinaryOp::Add)),
                    Token::MinusAssign => Some(Some(BinaryOp::Sub)),
                    Token::StarAssign => Some(Some(BinaryOp::Mul)),
                    Token::SlashAssign => Some(Some(BinaryOp::Div)),
                    Token::PercentAssign => Some(Some(BinaryOp::Rem)),
                    Token::AmpAssign => Some(Some(BinaryOp::BitAnd)),
                    Token::PipeAssign => Some(Some(BinaryOp::BitOr)),
                    Token::CaretAssign => Some(Some(BinaryOp::BitXor)),
                    Token::ShlAssign => Some(Some(BinaryOp::Shl)),
                    Token::ShrAssign => Some(Some(BinaryOp::Shr)),
                    Token::PlusPlus | Token::MinusMinus => {
                        let lexeme = self.bump();
                        let op = if lexeme.token == Token::PlusPlus {
                            BinaryOp::Add
                        } else {
                            BinaryOp::Sub
                        };
                        self.end_of_statement()?;
                        return Ok(Statement {
                            kind: StatementKind::Assign {
                                target,
                                operator: Some(op),
                                value: Expr {
                                    kind: ExprKind::Int(1),
                                    span: lexeme.span,
                                },
                            },
                            span: start.to(self.previous_span()),
                        });
                    }
                    _ => None,
                };
                let kind = match operator {
                    Some(operator) => {
                        self.bump();
                        let value = self.expr()?;
                        StatementKind::Assign {
                            target,
                            operator,
                            value,
                        }
                    }
                    None => StatementKind::Expr(target),
                };
                self.end_of_statement()?;
                Ok(Statement {
                    kind,
                    span: start.to(self.previous_span()),
                })
            }
        }
    }

    fn if_statement(&mut self) -> Parse<Statement> {
        self.enter()?;
        let result = self.if_statement_inner();
        self.leave();
        result
    }

    fn if_statement_inner(&mut self) -> Parse<Statement> {
        let start = self.expect(Token::If)?.span;
        if self.peek() != Token::LParen {
            return Err(self.error_expected("`(` (conditions are written in parentheses)"));
        }
        self.bump();
        let condition = self.nested(Self::expr)?;
        self.expect(Token::RParen)?;
        let then_block = self.block()?;
        let else_branch = if self.eat(Token::Else) {
            let statement = if self.peek() == Token::If {
                self.if_statement()?
            } else {
                let block = self.block()?;
                Statement {
                    span: block.span,
                    kind: StatementKind::Block(block),
                }
            };
            Some(Box::new(statement))
        } else {
            None
        };
        Ok(Statement {
            kind: StatementKind::If {
                condition,
                then_block,
                else_branch,
            },
            span: start.to(self.previous_span()),
        })
    }

    // ----- expressions -----

    /// Parses inside brackets, where `/` divides even in a predicate.
    fn nested<T>(&mut self, parse: impl FnOnce(&mut Self) -> Parse<T>) -> Parse<T> {
        let saved = self.no_slash;
        self.no_slash = false;
        let result = parse(self);
        self.no_slash = saved;
        result
    }

    fn expr(&mut self) -> Parse<Expr> {
        self.enter()?;
        let result = self.conditional();
        self.leave();
        result
    }

    fn conditional(&mut self) -> Parse<Expr> {
        let condition = self.binary(0)?;
        if !self.eat(Token::Question) {
            return Ok(condition);
        }
        let then_value = self.expr()?;
        self.expect(Token::Colon)?;
        let else_value = self.expr()?;
        Ok(Expr {
            span: condition.span.to(else_value.span),
            kind: ExprKind::Conditional {
                condition: Box::new(condition),
                then_value: Box::new(then_value),
                else_value: Box::new(else_value),
            },
        })
    }

    /// The binary operator at the cursor and its precedence (higher binds tighter).
    fn binary_op(&self) -> Option<(BinaryOp, u8)> {
        let op = match self.peek() {
            Token::PipePipe => (BinaryOp::Or, 0),
            Token::AmpAmp => (BinaryOp::And, 1),
            Token::Pipe => (BinaryOp::BitOr, 2),
            Token::Caret => (BinaryOp::BitXor, 3),
            Token::Amp => (BinaryOp::BitAnd, 4),
            Token::EqEq => (BinaryOp::Eq, 5),
            Token::NotEq => (BinaryOp::Ne, 5),
            Token::Lt => (BinaryOp::Lt, 6),
            Token::Le => (BinaryOp::Le, 6),
            Token::Gt => (BinaryOp::Gt, 6),
            Token::Ge => (BinaryOp::Ge, 6),
            Token::Shl => (BinaryOp::Shl, 7),
            Token::Shr => (BinaryOp::Shr, 7),
            Token::Plus => (BinaryOp::Add, 8),
            Token::Minus => (BinaryOp::Sub, 8),
            Token::Star => (BinaryOp::Mul, 9),
            Token::Slash if !self.no_slash => (BinaryOp::Div, 9),
            Token::Percent => (BinaryOp::Rem, 9),
            _ => return None,
        };
        Some(op)
    }

    /// Precedence climbing: operators of precedence `min` or above, left-associative.
    fn binary(&mut self, min: u8) -> Parse<Expr> {
        let mut lhs = self.unary()?;
        while let Some((op, precedence)) = self.binary_op() {
            if precedence < min {
                break;
            }
            self.bump();
            self.enter()?;
            let rhs = self.binary(precedence + 1);
            self.leave();
            let rhs = rhs?;
            lhs = self.node(
                lhs.span.to(rhs.span),
                ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            )?;
        }
        Ok(lhs)
    }

    /// Builds a node, refusing expressions with too many nodes.
    fn node(&mut self, span: Span, kind: ExprKind) -> Parse<Expr> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.diagnostics.push(
                Diagnostic::error(diagnostic::SYNTAX, span, "expression is too long").label(
                    format!("more than {MAX_NODES} operations in one expression"),
                ),
            );
            return Err(Failed);
        }
        Ok(Expr { kind, span })
    }

    fn unary(&mut self) -> Parse<Expr> {
        let op = match self.peek() {
            Token::Minus => UnaryOp::Negate,
            Token::Bang => UnaryOp::Not,
            Token::Tilde => UnaryOp::BitNot,
            Token::Star => UnaryOp::Deref,
            Token::Amp => UnaryOp::AddressOf,
            Token::LParen if self.cast_ahead() => return self.cast(),
            _ => return self.postfix(),
        };
        let start = self.bump().span;
        self.enter()?;
        let operand = self.unary();
        self.leave();
        let operand = operand?;
        Ok(Expr {
            span: start.to(operand.span),
            kind: ExprKind::Unary {
                op,
                operand: Box::new(operand),
            },
        })
    }

    /// Whether the `(` at the cursor opens a cast.
    fn cast_ahead(&self) -> bool {
        match self.peek_at(1) {
            Token::Struct | Token::Union | Token::Enum => true,
            Token::Ident => {
                let word = self.slice(self.tokens[self.position + 1].span);
                if builtin_word(word) {
                    return true;
                }
                // `(name *...)` or `(path::name *...)`.
                let mut ahead = 2;
                while self.peek_at(ahead) == Token::PathSep
                    && self.peek_at(ahead + 1) == Token::Ident
                {
                    ahead += 2;
                }
                if self.peek_at(ahead) != Token::Star {
                    return false;
                }
                while self.peek_at(ahead) == Token::Star {
                    ahead += 1;
                }
                self.peek_at(ahead) == Token::RParen
            }
            _ => false,
        }
    }

    fn cast(&mut self) -> Parse<Expr> {
        let start = self.expect(Token::LParen)?.span;
        let ty = self.type_expr()?;
        self.expect(Token::RParen)?;
        self.enter()?;
        let operand = self.unary();
        self.leave();
        let operand = operand?;
        Ok(Expr {
            span: start.to(operand.span),
            kind: ExprKind::Cast {
                ty,
                operand: Box::new(operand),
            },
        })
    }

    fn path(&mut self, what: &str) -> Parse<(String, Span)> {
        let first = self.ident(what)?;
        let mut name = first.name;
        let mut span = first.span;
        while self.peek() == Token::PathSep {
            self.bump();
            let next = self.ident("a name after `::`")?;
            name.push_str("::");
            name.push_str(&next.name);
            span = span.to(next.span);
        }
        Ok((name, span))
    }

    fn type_expr(&mut self) -> Parse<TypeExpr> {
        let start = self.span();
        let base = match self.peek() {
            Token::Struct => {
                self.bump();
                TypeName::Struct(self.path("a struct name")?.0)
            }
            Token::Union => {
                self.bump();
                TypeName::Union(self.path("a union name")?.0)
            }
            Token::Enum => {
                self.bump();
                TypeName::Enum(self.path("an enum name")?.0)
            }
            _ => {
                let mut words = Vec::new();
                while self.peek() == Token::Ident {
                    let word = self.slice(self.span()).to_string();
                    if !builtin_word(&word) {
                        break;
                    }
                    words.push(word);
                    self.bump();
                }
                if words.is_empty() {
                    TypeName::Named(self.path("a type name")?.0)
                } else {
                    match builtin_type(&words) {
                        Some(builtin) => TypeName::Builtin(builtin),
                        None => {
                            let span = start.to(self.previous_span());
                            self.diagnostics.push(
                                Diagnostic::error(
                                    diagnostic::UNKNOWN_TYPE,
                                    span,
                                    format!("`{}` is not a type", words.join(" ")),
                                )
                                .label("not a valid combination of type words"),
                            );
                            return Err(Failed);
                        }
                    }
                }
            }
        };
        let mut pointers = 0u8;
        while self.eat(Token::Star) {
            pointers = pointers.saturating_add(1);
        }
        Ok(TypeExpr {
            base,
            pointers,
            span: start.to(self.previous_span()),
        })
    }

    fn postfix(&mut self) -> Parse<Expr> {
        let mut expr = self.primary()?;
        loop {
            match self.peek() {
                Token::Dot | Token::Arrow => {
                    let arrow = self.bump().token == Token::Arrow;
                    let member = self.ident("a member name")?;
                    expr = self.node(
                        expr.span.to(member.span),
                        ExprKind::Member {
                            base: Box::new(expr),
                            member,
                            arrow,
                        },
                    )?;
                }
                Token::LBracket => {
                    self.bump();
                    let index = self.nested(Self::expr)?;
                    let end = self.expect(Token::RBracket)?.span;
                    expr = self.node(
                        expr.span.to(end),
                        ExprKind::Index {
                            base: Box::new(expr),
                            index: Box::new(index),
                        },
                    )?;
                }
                _ => return Ok(expr),
            }
        }
    }

    fn arguments(&mut self, close: Token) -> Parse<Vec<Expr>> {
        self.nested(|parser| {
            let mut args = Vec::new();
            if parser.peek() != close {
                loop {
                    args.push(parser.expr()?);
                    if !parser.eat(Token::Comma) {
                        break;
                    }
                }
            }
            parser.expect(close)?;
            Ok(args)
        })
    }

    fn primary(&mut self) -> Parse<Expr> {
        let lexeme = self.tokens[self.position];
        let span = lexeme.span;
        let kind = match lexeme.token {
            Token::Integer => {
                self.bump();
                ExprKind::Int(self.integer_value(span))
            }
            Token::String => {
                self.bump();
                ExprKind::Str(self.string_value(span))
            }
            Token::True => {
                self.bump();
                ExprKind::Bool(true)
            }
            Token::False => {
                self.bump();
                ExprKind::Bool(false)
            }
            Token::Dollar => {
                self.bump();
                ExprKind::Context(self.slice(span)[1..].to_string())
            }
            Token::DollarDollar => {
                self.bump();
                let name = &self.slice(span)[2..];
                if name != "parms" {
                    self.diagnostics.push(
                        Diagnostic::error(
                            diagnostic::UNKNOWN_VARIABLE,
                            span,
                            format!("unknown variable `$${name}`"),
                        )
                        .label("the only `$$` variable is `$$parms`"),
                    );
                    return Err(Failed);
                }
                ExprKind::Parms
            }
            Token::At => {
                self.bump();
                let name = self.slice(span)[1..].to_string();
                if name == "entry" && self.peek() == Token::LParen {
                    self.bump();
                    let inner = self.nested(Self::expr)?;
                    let end = self.expect(Token::RParen)?.span;
                    return Ok(Expr {
                        kind: ExprKind::Entry(Box::new(inner)),
                        span: span.to(end),
                    });
                }
                let name = Ident { name, span };
                let keys = if self.eat(Token::LBracket) {
                    let keys = self.arguments(Token::RBracket)?;
                    if keys.is_empty() {
                        let end = self.previous_span();
                        self.diagnostics.push(
                            Diagnostic::error(diagnostic::SYNTAX, span.to(end), "empty map key")
                                .label("a map key needs at least one expression")
                                .help(format!("write `@{}` for a map without keys", name.name)),
                        );
                        return Err(Failed);
                    }
                    keys
                } else {
                    Vec::new()
                };
                return Ok(Expr {
                    kind: ExprKind::Map { name, keys },
                    span: span.to(self.previous_span()),
                });
            }
            Token::Ident => {
                self.bump();
                let name = Ident {
                    name: self.slice(span).to_string(),
                    span,
                };
                if self.eat(Token::LParen) {
                    let args = self.arguments(Token::RParen)?;
                    return Ok(Expr {
                        kind: ExprKind::Call { name, args },
                        span: span.to(self.previous_span()),
                    });
                }
                ExprKind::Name(name.name)
            }
            Token::LParen => {
                self.bump();
                let inner = self.nested(Self::expr)?;
                let end = self.expect(Token::RParen)?.span;
                return Ok(Expr {
                    kind: inner.kind,
                    span: span.to(end),
                });
            }
            _ => return Err(self.error_expected("an expression")),
        };
        Ok(Expr { kind, span })
    }

    // ----- literals -----

    fn integer_value(&mut self, span: Span) -> u64 {
        let text: String = self.slice(span).chars().filter(|c| *c != '_').collect();
        let parsed = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))
        {
            u64::from_str_radix(hex, 16)
        } else {
            text.parse::<u64>()
        };
        match parsed {
            Ok(value) => value,
            Err(_) => {
                self.diagnostics.push(
                    Diagnostic::error(
                        diagnostic::INTEGER_TOO_LARGE,
                        span,
                        "integer literal is too large",
                    )
                    .label("does not fit in 64 bits"),
                );
                0
            }
        }
    }

    fn string_value(&mut self, span: Span) -> String {
        let text = self.text;
        let raw = &text[span.range()];
        let body = &raw[1..raw.len() - 1];
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((index, character)) = chars.next() {
            if character != '\\' {
                value.push(character);
                continue;
            }
            let escape_start = span.start as usize + 1 + index;
            let decoded = match chars.next() {
                Some((_, 'n')) => Some('\n'),
                Some((_, 't')) => Some('\t'),
                Some((_, 'r')) => Some('\r'),
                Some((_, '0')) => Some('\0'),
                Some((_, '\\')) => Some('\\'),
                Some((_, '"')) => Some('"'),
                Some((_, '\'')) => Some('\''),
                Some((_, 'x')) => {
                    let digits: String = chars.clone().take(2).map(|(_, c)| c).collect();
                    match u8::from_str_radix(&digits, 16) {
                        Ok(byte) if digits.len() == 2 && byte < 0x80 => {
                            chars.next();
                            chars.next();
                            Some(byte as char)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match decoded {
                Some(character) => value.push(character),
                None => {
                    let end = chars
                        .clone()
                        .next()
                        .map_or(span.end as usize - 1, |(next, _)| {
                            span.start as usize + 1 + next
                        });
                    self.diagnostics.push(
                        Diagnostic::error(
                            diagnostic::BAD_ESCAPE,
                            Span::new(span.file, escape_start..end.max(escape_start + 1)),
                            "unknown escape sequence",
                        )
                        .label("not an escape")
                        .help("escapes are \\n \\t \\r \\0 \\\\ \\\" \\' and \\xHH (below 0x80)"),
                    );
                }
            }
        }
        value
    }
}

/// Words of C and Rust scalar type names usable in casts.
fn builtin_word(word: &str) -> bool {
    matches!(
        word,
        "u8" | "u16"
            | "u32"
            | "u64"
            | "i8"
            | "i16"
            | "i32"
            | "i64"
            | "bool"
            | "void"
            | "char"
            | "short"
            | "int"
            | "long"
            | "unsigned"
            | "signed"
    )
}

/// The built-in type a sequence of type words names (x86_64 sizes).
fn builtin_type(words: &[String]) -> Option<Builtin> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let int = |bytes, signed| Some(Builtin::Int { bytes, signed });
    match words.as_slice() {
        ["u8"] => int(1, false),
        ["u16"] => int(2, false),
        ["u32"] => int(4, false),
        ["u64"] => int(8, false),
        ["i8"] => int(1, true),
        ["i16"] => int(2, true),
        ["i32"] => int(4, true),
        ["i64"] => int(8, true),
        ["bool"] => Some(Builtin::Bool),
        ["void"] => Some(Builtin::Void),
        ["char"] | ["signed", "char"] => int(1, true),
        ["unsigned", "char"] => int(1, false),
        ["short"] | ["short", "int"] | ["signed", "short"] => int(2, true),
        ["unsigned", "short"] | ["unsigned", "short", "int"] => int(2, false),
        ["int"] | ["signed"] | ["signed", "int"] => int(4, true),
        ["unsigned"] | ["unsigned", "int"] => int(4, false),
        ["long"] | ["long", "int"] | ["signed", "long"] | ["long", "long"] => int(8, true),
        ["signed", "long", "long"] => int(8, true),
        ["unsigned", "long"] | ["unsigned", "long", "long"] | ["unsigned", "long", "int"] => {
            int(8, false)
        }
        _ => None,
    }
}
