//! The lexer: script text to tokens with spans (a `logos` state machine).
//!
//! Comments are `// ...`, `# ...` (so a `#!` line works) and `/* ... */`.
//! Escapes in string literals are decoded by the parser, which can then point at
//! the offending escape.

use logos::Logos;

use crate::diagnostic::{self, Diagnostic};
use crate::source::{FileId, Span};

/// One token kind. Tokens that carry text (names, numbers, strings) are read back
/// from the source through their span.
#[derive(Logos, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip r"//[^\n]*")]
#[logos(skip r"#[^\n]*")]
#[logos(skip r"/\*([^*]|\*+[^*/])*\*+/")]
pub enum Token {
    /// `probe`
    #[token("probe")]
    Probe,
    /// `alias`
    #[token("alias")]
    Alias,
    /// `function`
    #[token("function")]
    Function,
    /// `let`
    #[token("let")]
    Let,
    /// `if`
    #[token("if")]
    If,
    /// `else`
    #[token("else")]
    Else,
    /// `return`
    #[token("return")]
    Return,
    /// `true`
    #[token("true")]
    True,
    /// `false`
    #[token("false")]
    False,
    /// `struct`
    #[token("struct")]
    Struct,
    /// `union`
    #[token("union")]
    Union,
    /// `enum`
    #[token("enum")]
    Enum,
    /// An identifier.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    /// `$name`: a parameter, local or marker argument of the probed code.
    #[regex(r"\$[A-Za-z_][A-Za-z0-9_]*")]
    Dollar,
    /// `$$name`: `$$parms`.
    #[regex(r"\$\$[A-Za-z_][A-Za-z0-9_]*")]
    DollarDollar,
    /// `@name`, or `@` alone (the anonymous map).
    #[regex(r"@[A-Za-z_][A-Za-z0-9_]*")]
    #[token("@")]
    At,
    /// A decimal or `0x` hexadecimal integer, `_` allowed between digits.
    #[regex(r"[0-9][0-9_]*")]
    #[regex(r"0[xX][0-9a-fA-F_]+")]
    Integer,
    /// A string literal with its quotes.
    #[regex(r#""([^"\\\n]|\\[^\n])*""#)]
    String,
    /// A string literal missing its closing quote.
    #[regex(r#""([^"\\\n]|\\[^\n])*"#)]
    UnterminatedString,
    /// A block comment missing its `*/`.
    #[regex(r"/\*([^*]|\*+[^*/])*\**")]
    UnterminatedComment,
    /// `{`
    #[token("{")]
    LBrace,
    /// `}`
    #[token("}")]
    RBrace,
    /// `(`
    #[token("(")]
    LParen,
    /// `)`
    #[token(")")]
    RParen,
    /// `[`
    #[token("[")]
    LBracket,
    /// `]`
    #[token("]")]
    RBracket,
    /// `,`
    #[token(",")]
    Comma,
    /// `;`
    #[token(";")]
    Semicolon,
    /// `.`
    #[token(".")]
    Dot,
    /// `->`
    #[token("->")]
    Arrow,
    /// `::`
    #[token("::")]
    PathSep,
    /// `:`
    #[token(":")]
    Colon,
    /// `?`
    #[token("?")]
    Question,
    /// `=`
    #[token("=")]
    Assign,
    /// `==`
    #[token("==")]
    EqEq,
    /// `!=`
    #[token("!=")]
    NotEq,
    /// `<`
    #[token("<")]
    Lt,
    /// `<=`
    #[token("<=")]
    Le,
    /// `>`
    #[token(">")]
    Gt,
    /// `>=`
    #[token(">=")]
    Ge,
    /// `<<`
    #[token("<<")]
    Shl,
    /// `>>`
    #[token(">>")]
    Shr,
    /// `+`
    #[token("+")]
    Plus,
    /// `-`
    #[token("-")]
    Minus,
    /// `*`
    #[token("*")]
    Star,
    /// `/`
    #[token("/")]
    Slash,
    /// `%`
    #[token("%")]
    Percent,
    /// `&`
    #[token("&")]
    Amp,
    /// `&&`
    #[token("&&")]
    AmpAmp,
    /// `|`
    #[token("|")]
    Pipe,
    /// `||`
    #[token("||")]
    PipePipe,
    /// `^`
    #[token("^")]
    Caret,
    /// `!`
    #[token("!")]
    Bang,
    /// `~`
    #[token("~")]
    Tilde,
    /// `+=`
    #[token("+=")]
    PlusAssign,
    /// `-=`
    #[token("-=")]
    MinusAssign,
    /// `*=`
    #[token("*=")]
    StarAssign,
    /// `/=`
    #[token("/=")]
    SlashAssign,
    /// `%=`
    #[token("%=")]
    PercentAssign,
    /// `&=`
    #[token("&=")]
    AmpAssign,
    /// `|=`
    #[token("|=")]
    PipeAssign,
    /// `^=`
    #[token("^=")]
    CaretAssign,
    /// `<<=`
    #[token("<<=")]
    ShlAssign,
    /// `>>=`
    #[token(">>=")]
    ShrAssign,
    /// `++`
    #[token("++")]
    PlusPlus,
    /// `--`
    #[token("--")]
    MinusMinus,
    /// The end of the file (never produced by logos; appended by [`lex`]).
    Eof,
}

impl Token {
    /// How the parser names the token in "expected ..., found ..." messages.
    pub fn describe(self) -> &'static str {
        match self {
            Token::Probe => "`probe`",
            Token::Alias => "`alias`",
            Token::Function => "`function`",
            Token::Let => "`let`",
            Token::If => "`if`",
            Token::Else => "`else`",
            Token::Return => "`return`",
            Token::True => "`true`",
            Token::False => "`false`",
            Token::Struct => "`struct`",
            Token::Union => "`union`",
            Token::Enum => "`enum`",
            Token::Ident => "an identifier",
            Token::Dollar => "a `$variable`",
            Token::DollarDollar => "`$$parms`",
            Token::At => "a `@map`",
            Token::Integer => "an integer",
            Token::String | Token::UnterminatedString => "a string",
            Token::UnterminatedComment => "a comment",
            Token::LBrace => "`{`",
            Token::RBrace => "`}`",
            Token::LParen => "`(`",
            Token::RParen => "`)`",
            Token::LBracket => "`[`",
            Token::RBracket => "`]`",
            Token::Comma => "`,`",
            Token::Semicolon => "`;`",
            Token::Dot => "`.`",
            Token::Arrow => "`->`",
            Token::PathSep => "`::`",
            Token::Colon => "`:`",
            Token::Question => "`?`",
            Token::Assign => "`=`",
            Token::EqEq => "`==`",
            Token::NotEq => "`!=`",
            Token::Lt => "`<`",
            Token::Le => "`<=`",
            Token::Gt => "`>`",
            Token::Ge => "`>=`",
            Token::Shl => "`<<`",
            Token::Shr => "`>>`",
            Token::Plus => "`+`",
            Token::Minus => "`-`",
            Token::Star => "`*`",
            Token::Slash => "`/`",
            Token::Percent => "`%`",
            Token::Amp => "`&`",
            Token::AmpAmp => "`&&`",
            Token::Pipe => "`|`",
            Token::PipePipe => "`||`",
            Token::Caret => "`^`",
            Token::Bang => "`!`",
            Token::Tilde => "`~`",
            Token::PlusAssign => "`+=`",
            Token::MinusAssign => "`-=`",
            Token::StarAssign => "`*=`",
            Token::SlashAssign => "`/=`",
            Token::PercentAssign => "`%=`",
            Token::AmpAssign => "`&=`",
            Token::PipeAssign => "`|=`",
            Token::CaretAssign => "`^=`",
            Token::ShlAssign => "`<<=`",
            Token::ShrAssign => "`>>=`",
            Token::PlusPlus => "`++`",
            Token::MinusMinus => "`--`",
            Token::Eof => "the end of the file",
        }
    }
}

/// A token and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lexeme {
    /// What it is.
    pub token: Token,
    /// Where it is.
    pub span: Span,
}

/// Splits `text` into tokens, ending with [`Token::Eof`]. Characters that start no
/// token are reported and skipped; unterminated strings and comments are reported
/// and kept as tokens so the parser can go on.
pub fn lex(file: FileId, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Vec<Lexeme> {
    let mut lexemes = Vec::new();
    let mut lexer = Token::lexer(text);
    while let Some(result) = lexer.next() {
        let span = Span::new(file, lexer.span());
        match result {
            Ok(Token::UnterminatedString) => {
                diagnostics.push(
                    Diagnostic::error(
                        diagnostic::UNTERMINATED_STRING,
                        span,
                        "unterminated string literal",
                    )
                    .label("this string has no closing `\"` on its line"),
                );
                lexemes.push(Lexeme {
                    token: Token::UnterminatedString,
                    span,
                });
            }
            Ok(Token::UnterminatedComment) => {
                diagnostics.push(
                    Diagnostic::error(
                        diagnostic::UNTERMINATED_COMMENT,
                        Span::new(file, span.start as usize..span.start as usize + 2),
                        "unterminated block comment",
                    )
                    .label("this comment has no closing `*/`"),
                );
            }
            Ok(token) => lexemes.push(Lexeme { token, span }),
            Err(()) => {
                let character = text[span.range()].chars().next().unwrap_or('?');
                let mut error = Diagnostic::error(
                    diagnostic::UNEXPECTED_CHARACTER,
                    span,
                    format!("unexpected character `{}`", character.escape_debug()),
                );
                if character == '%' || character == '\'' {
                    error = error.help("registers are read with `reg(\"rdi\")`");
                }
                diagnostics.push(error);
            }
        }
    }
    let end = text.len();
    lexemes.push(Lexeme {
        token: Token::Eof,
        span: Span::new(file, end..end),
    });
    lexemes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Token> {
        let mut diagnostics = Vec::new();
        lex(FileId(0), text, &mut diagnostics)
            .into_iter()
            .map(|lexeme| lexeme.token)
            .collect()
    }

    #[test]
    fn tokens_of_a_probe() {
        assert_eq!(
            kinds("probe begin { @x[$a, $$parms] += 0x1_0; } // done"),
            vec![
                Token::Probe,
                Token::Ident,
                Token::LBrace,
                Token::At,
                Token::LBracket,
                Token::Dollar,
                Token::Comma,
                Token::DollarDollar,
                Token::RBracket,
                Token::PlusAssign,
                Token::Integer,
                Token::Semicolon,
                Token::RBrace,
                Token::Eof
            ]
        );
    }

    #[test]
    fn comments_and_strings() {
        assert_eq!(
            kinds("#!/usr/bin/probeport\n/* a * b */ \"a\\\"b\" ->"),
            vec![Token::String, Token::Arrow, Token::Eof]
        );
        assert_eq!(kinds("\"abc"), vec![Token::UnterminatedString, Token::Eof]);
        assert_eq!(kinds("/* abc"), vec![Token::Eof]);
        assert_eq!(
            kinds("a <<= b"),
            vec![Token::Ident, Token::ShlAssign, Token::Ident, Token::Eof]
        );
    }
}
