//! Line and column lookup for key paths such as `routes[1].upstream`.
//!
//! serde_yaml reports positions only for errors raised while deserializing. Checks that span
//! the whole file (duplicate names, unknown references) run afterwards, so this module parses
//! the text a second time with yaml-rust2's event parser, which marks every node, and records
//! where each key path starts. It runs only when there is an error to report.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column of a node in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of every key path in one YAML document: the value's position under the path
/// itself, and the key's position under `PATH#key` for mapping entries.
pub struct PositionIndex {
    positions: HashMap<String, Position>,
    /// Scalar values by path, to find which child of a mapping contains a reported value.
    scalars: HashMap<String, String>,
}

enum Frame {
    Sequence {
        path: String,
        next_index: usize,
    },
    Mapping {
        path: String,
        pending_key: Option<String>,
    },
}

struct Collector {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
    scalars: HashMap<String, String>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl Collector {
    /// Returns the path of the node that starts now, or None when the event is a mapping key.
    fn enter_node(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next_index }) => {
                let child = format!("{path}[{next_index}]");
                *next_index += 1;
                Some(child)
            }
            Some(Frame::Mapping { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    // This node is a key. Only scalar keys are addressable by a path.
                    let key = scalar_key.unwrap_or("?").to_owned();
                    let key_path = join(path, &key);
                    self.positions
                        .entry(format!("{key_path}#key"))
                        .or_insert(position(mark));
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.enter_node(Some(&value), mark) {
                    self.positions.entry(path.clone()).or_insert(position(mark));
                    self.scalars.entry(path).or_insert(value);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.enter_node(None, mark) {
                    self.positions.entry(path).or_insert(position(mark));
                }
            }
            Event::SequenceStart(..) => {
                let path = self.enter_node(None, mark).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(position(mark));
                self.stack.push(Frame::Sequence {
                    path,
                    next_index: 0,
                });
            }
            Event::MappingStart(..) => {
                let path = self.enter_node(None, mark).unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(position(mark));
                self.stack.push(Frame::Mapping {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl PositionIndex {
    /// Parses `text` and records the position of every node. A text that does not parse gives
    /// an empty index; serde_yaml has already reported the syntax error by then.
    pub fn build(text: &str) -> Self {
        let mut collector = Collector {
            stack: Vec::new(),
            positions: HashMap::new(),
            scalars: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut collector, false);
        PositionIndex {
            positions: collector.positions,
            scalars: collector.scalars,
        }
    }

    /// Finds the position of `path`, or of its nearest ancestor that the file contains.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut current = path;
        loop {
            if let Some(position) = self.positions.get(current) {
                return Some(*position);
            }
            let cut = current.rfind(['.', '['])?;
            current = &current[..cut];
        }
    }

    /// Finds the direct child of `parent` whose scalar value is `value`, if exactly one is.
    pub fn child_with_value(&self, parent: &str, value: &str) -> Option<String> {
        let mut found = self.scalars.iter().filter(|(path, scalar)| {
            scalar.as_str() == value
                && path
                    .strip_prefix(parent)
                    .and_then(|rest| {
                        rest.strip_prefix('.')
                            .or(if parent.is_empty() { Some(rest) } else { None })
                    })
                    .is_some_and(|key| !key.contains(['.', '[', '#']))
        });
        let first = found.next()?;
        found.next().is_none().then(|| first.0.clone())
    }

    /// Finds the position of the key of a mapping entry, falling back to [`Self::find`].
    pub fn find_key(&self, path: &str) -> Option<Position> {
        self.positions
            .get(&format!("{path}#key"))
            .copied()
            .or_else(|| self.find(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths() {
        let text = "listen:\n  - address: 1.2.3.4:80\nroutes:\n  - name: a\n    match: { path: / }\n  - name: b\n    upstream: x\n";
        let index = PositionIndex::build(text);
        assert_eq!(
            index.find("routes[1].upstream"),
            Some(Position {
                line: 7,
                column: 15
            })
        );
        assert_eq!(
            index.find("routes[0].match.path"),
            Some(Position {
                line: 5,
                column: 20
            })
        );
        assert_eq!(
            index.find_key("routes[1].upstream"),
            Some(Position { line: 7, column: 5 })
        );
        // A missing key falls back to its nearest ancestor; only the line is asserted because
        // yaml-rust2 marks a block mapping's start after its first key.
        assert_eq!(
            index.find("routes[1].rewrite.host").map(|p| p.line),
            Some(6)
        );
    }
}
