//! A YAML tree that remembers where every node came from, so that rule
//! errors can name the line. Built on `yaml-rust2`'s marked event parser.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Upper bound on nodes, so alias expansion cannot blow up memory.
const MAX_NODES: usize = 200_000;

/// One YAML node and the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// 1-based line of the node's first character.
    pub line: usize,
    /// What the node holds.
    pub kind: Kind,
}

/// The shape of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A scalar. `quoted` is true for quoted and block scalars, which are
    /// always strings; plain scalars may be null or numbers.
    Scalar {
        /// The text of the scalar.
        text: String,
        /// Whether it was written quoted (or as a block).
        quoted: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// True for `~`, `null`, or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, quoted: false }
            if text.is_empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A short name for the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "null",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A syntax error, with its 1-based line.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What the parser said.
    pub message: String,
}

/// Parses the first document of `text`. `Ok(None)` means the document is
/// empty (only comments or whitespace).
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        return Err(SyntaxError {
            line: e.marker().line(),
            message: e.info().to_string(),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root)
}

/// Turns the parser's events into a tree.
#[derive(Default)]
struct Builder {
    /// Open collections: the node being filled and its pending map key.
    stack: Vec<(Node, Option<Node>, usize)>,
    /// Values by anchor id, for aliases.
    anchors: HashMap<usize, Node>,
    /// The finished document.
    root: Option<Node>,
    /// Nodes created so far, to bound alias expansion.
    count: usize,
    /// The first structural error; parsing continues but the result is void.
    error: Option<SyntaxError>,
}

impl Builder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, key, _)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                Kind::Scalar { .. } => {}
            },
        }
    }

    fn count(&mut self, n: usize, mark: Marker) -> bool {
        self.count += n;
        if self.count > MAX_NODES && self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                message: format!(
                    "document too large: more than {MAX_NODES} nodes after expanding aliases"
                ),
            });
        }
        self.error.is_none()
    }
}

fn size(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| size(k) + size(v))
                .sum::<usize>()
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                if self.count(1, mark) {
                    let quoted = !matches!(style, TScalarStyle::Plain);
                    self.finish(
                        Node {
                            line,
                            kind: Kind::Scalar { text, quoted },
                        },
                        anchor,
                    );
                }
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((
                    Node {
                        line,
                        kind: Kind::Seq(Vec::new()),
                    },
                    None,
                    anchor,
                ));
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((
                    Node {
                        line,
                        kind: Kind::Map(Vec::new()),
                    },
                    None,
                    anchor,
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop()
                    && self.count(1, mark)
                {
                    self.finish(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => {
                    if self.count(size(&node), mark) {
                        self.finish(node, 0);
                    }
                }
                None => {
                    self.error = Some(SyntaxError {
                        line,
                        message: "alias to an unknown anchor".to_string(),
                    })
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept() {
        let root = parse("# c\nalerts:\n  - name: a\n    duration: 5m\n")
            .unwrap()
            .unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        let Kind::Seq(items) = &entries[0].1.kind else {
            panic!()
        };
        let Kind::Map(rule) = &items[0].kind else {
            panic!()
        };
        assert_eq!(rule[1].0.line, 4);
        assert_eq!(rule[1].1.as_str(), Some("5m"));
    }

    #[test]
    fn empty_documents_are_none() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n\n").unwrap(), None);
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = "a".to_string();
        for i in 0..8 {
            let name = format!("b{i}");
            text.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = name;
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("too large"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = parse("alerts:\n  - name: \"unterminated\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }
}
