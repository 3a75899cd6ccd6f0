//! A pure, local schema-evolution check: can a reader on the new schema read every record a
//! writer on the old schema wrote (BACKWARD)? It follows Avro's schema-resolution rules and
//! names each field that breaks, so `topics schemas check` can say *which* change to undo
//! before it asks the registry (which only answers yes or no, or names one diff).
//!
//! It is stricter than plain Avro resolution in two places, both on purpose:
//! - an enum symbol the writer has and the reader lacks is a violation unless the reader's enum
//!   has a default (Avro only fails at read time, when such a record turns up);
//! - a changed logical type (`timestamp-millis` to `timestamp-micros`, a decimal's scale) is a
//!   violation: the bytes still read, but as another value.

use std::collections::{HashMap, HashSet};
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    Alias, EnumSchema, InnerDecimalSchema, Name, RecordSchema, ResolvedSchema, UuidSchema,
};

/// One change that breaks reading old data with the new schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the field from the root record (`payment.amount_minor`); `[]` marks an
    /// array's items, `{}` a map's values; empty for the root record itself.
    pub field: String,
    /// What breaks, in words.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "(record): {}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// A schema text could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    #[error("the old schema does not parse: {0}")]
    OldSchema(String),
    #[error("the new schema does not parse: {0}")]
    NewSchema(String),
}

/// BACKWARD: what stops a reader on `new_avsc` from reading data written with `old_avsc`.
/// Empty means the change is safe to deploy consumers-first.
pub fn backward_violations(old_avsc: &str, new_avsc: &str) -> Result<Vec<Violation>, CompatError> {
    let old = Schema::parse_str(old_avsc).map_err(|e| CompatError::OldSchema(e.to_string()))?;
    let new = Schema::parse_str(new_avsc).map_err(|e| CompatError::NewSchema(e.to_string()))?;
    Ok(read_violations(&old, &new))
}

/// FORWARD: what stops a reader on `old_avsc` from reading data written with `new_avsc`.
pub fn forward_violations(old_avsc: &str, new_avsc: &str) -> Result<Vec<Violation>, CompatError> {
    let old = Schema::parse_str(old_avsc).map_err(|e| CompatError::OldSchema(e.to_string()))?;
    let new = Schema::parse_str(new_avsc).map_err(|e| CompatError::NewSchema(e.to_string()))?;
    Ok(read_violations(&new, &old))
}

/// What stops `reader` from reading data written with `writer`.
pub fn read_violations(writer: &Schema, reader: &Schema) -> Vec<Violation> {
    let mut walk = Walk {
        writer_names: names_of(writer),
        reader_names: names_of(reader),
        in_progress: HashSet::new(),
        out: Vec::new(),
    };
    walk.check("", writer, reader);
    walk.out
}

/// Named types of a schema, to follow `Schema::Ref`s (a named type used a second time).
fn names_of(schema: &Schema) -> HashMap<Name, Schema> {
    match ResolvedSchema::try_from(schema) {
        Ok(resolved) => resolved
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect(),
        // A schema that parsed but does not resolve has dangling references; they are reported
        // where they are met.
        Err(_) => HashMap::new(),
    }
}

struct Walk {
    writer_names: HashMap<Name, Schema>,
    reader_names: HashMap<Name, Schema>,
    /// Record pairs being checked, so recursive records terminate.
    in_progress: HashSet<(String, String)>,
    out: Vec<Violation>,
}

/// The wire type under a logical type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
    Ref,
}

fn base(schema: &Schema) -> Base {
    match schema {
        Schema::Null => Base::Null,
        Schema::Boolean => Base::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Base::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Base::Long,
        Schema::Float => Base::Float,
        Schema::Double => Base::Double,
        Schema::Bytes | Schema::BigDecimal => Base::Bytes,
        Schema::String => Base::String,
        Schema::Array(_) => Base::Array,
        Schema::Map(_) => Base::Map,
        Schema::Union(_) => Base::Union,
        Schema::Record(_) => Base::Record,
        Schema::Enum(_) => Base::Enum,
        Schema::Fixed(_) | Schema::Duration(_) => Base::Fixed,
        Schema::Decimal(d) => match d.inner {
            InnerDecimalSchema::Bytes => Base::Bytes,
            InnerDecimalSchema::Fixed(_) => Base::Fixed,
        },
        Schema::Uuid(UuidSchema::String) => Base::String,
        Schema::Uuid(UuidSchema::Bytes) => Base::Bytes,
        Schema::Uuid(UuidSchema::Fixed(_)) => Base::Fixed,
        Schema::Ref { .. } => Base::Ref,
    }
}

fn logical(schema: &Schema) -> Option<String> {
    Some(
        match schema {
            Schema::Date => "date",
            Schema::TimeMillis => "time-millis",
            Schema::TimeMicros => "time-micros",
            Schema::TimestampMillis => "timestamp-millis",
            Schema::TimestampMicros => "timestamp-micros",
            Schema::TimestampNanos => "timestamp-nanos",
            Schema::LocalTimestampMillis => "local-timestamp-millis",
            Schema::LocalTimestampMicros => "local-timestamp-micros",
            Schema::LocalTimestampNanos => "local-timestamp-nanos",
            Schema::BigDecimal => "big-decimal",
            Schema::Uuid(_) => "uuid",
            Schema::Duration(_) => "duration",
            Schema::Decimal(d) => return Some(format!("decimal({}, {})", d.precision, d.scale)),
            _ => return None,
        }
        .to_owned(),
    )
}

fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {} ({} bytes)", f.name.fullname(None), f.size),
        Schema::Ref { name } => name.fullname(None),
        Schema::Array(a) => format!("array<{}>", describe(&a.items)),
        Schema::Map(m) => format!("map<{}>", describe(&m.types)),
        Schema::Union(u) => {
            let branches: Vec<String> = u.variants().iter().map(describe).collect();
            format!("[{}]", branches.join(", "))
        }
        other => match logical(other) {
            Some(logical) => format!(
                "{} ({logical})",
                format!("{:?}", base(other)).to_lowercase()
            ),
            None => format!("{:?}", base(other)).to_lowercase(),
        },
    }
}

/// Avro's promotions: what a reader of `reader` accepts from a writer of `writer`.
fn promotes(writer: Base, reader: Base) -> bool {
    use Base::*;
    writer == reader
        || matches!(
            (writer, reader),
            (Int, Long | Float | Double)
                | (Long, Float | Double)
                | (Float, Double)
                | (String, Bytes)
                | (Bytes, String)
        )
}

fn name_of(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Record(r) => Some(&r.name),
        Schema::Enum(e) => Some(&e.name),
        Schema::Fixed(f) | Schema::Duration(f) => Some(&f.name),
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Fixed(f) => Some(&f.name),
            InnerDecimalSchema::Bytes => None,
        },
        Schema::Uuid(UuidSchema::Fixed(f)) => Some(&f.name),
        _ => None,
    }
}

fn aliases_of(schema: &Schema) -> &[Alias] {
    let aliases = match schema {
        Schema::Record(r) => &r.aliases,
        Schema::Enum(e) => &e.aliases,
        Schema::Fixed(f) | Schema::Duration(f) => &f.aliases,
        _ => return &[],
    };
    aliases.as_deref().unwrap_or(&[])
}

/// Named types resolve by full name, or by one of the reader's aliases.
fn names_match(writer: &Schema, reader: &Schema) -> bool {
    match (name_of(writer), name_of(reader)) {
        (Some(w), Some(r)) => {
            let w = w.fullname(None);
            w == r.fullname(None)
                || aliases_of(reader)
                    .iter()
                    .any(|alias| alias.fullname(r.namespace()) == w)
        }
        _ => true,
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

impl Walk {
    fn violation(&mut self, path: &str, reason: String) {
        self.out.push(Violation {
            field: path.to_owned(),
            reason,
        });
    }

    fn deref<'s>(names: &'s HashMap<Name, Schema>, schema: &'s Schema) -> Option<&'s Schema> {
        match schema {
            Schema::Ref { name } => names.get(name),
            other => Some(other),
        }
    }

    /// Whether `reader` is the union branch Avro picks for `writer` (first match wins).
    fn branch_matches(&self, writer: &Schema, reader: &Schema) -> bool {
        let (Some(writer), Some(reader)) = (
            Self::deref(&self.writer_names, writer),
            Self::deref(&self.reader_names, reader),
        ) else {
            return false;
        };
        promotes(base(writer), base(reader)) && names_match(writer, reader)
    }

    fn check(&mut self, path: &str, writer: &Schema, reader: &Schema) {
        let Some(writer) = Self::deref(&self.writer_names, writer).cloned() else {
            return self.violation(
                path,
                format!("the old schema's {} is not defined", describe(writer)),
            );
        };
        let Some(reader) = Self::deref(&self.reader_names, reader).cloned() else {
            return self.violation(
                path,
                format!("the new schema's {} is not defined", describe(reader)),
            );
        };
        match (&writer, &reader) {
            (Schema::Union(w), _) => {
                // Every branch the old writer may have chosen must be readable.
                for branch in w.variants() {
                    match &reader {
                        Schema::Union(r) => match r
                            .variants()
                            .iter()
                            .find(|rb| self.branch_matches(branch, rb))
                        {
                            Some(rb) => self.check(path, branch, &rb.clone()),
                            None => self.violation(
                                path,
                                format!(
                                    "old data may hold {} here, which the new union {} cannot read",
                                    describe(branch),
                                    describe(&reader)
                                ),
                            ),
                        },
                        _ if self.branch_matches(branch, &reader) => {
                            self.check(path, branch, &reader)
                        }
                        _ => self.violation(
                            path,
                            format!(
                                "old data may hold {} here, but the new schema reads only {}",
                                describe(branch),
                                describe(&reader)
                            ),
                        ),
                    }
                }
            }
            (_, Schema::Union(r)) => {
                match r
                    .variants()
                    .iter()
                    .find(|rb| self.branch_matches(&writer, rb))
                {
                    Some(rb) => self.check(path, &writer, &rb.clone()),
                    None => self.violation(
                        path,
                        format!(
                            "type changed from {} to {}, which has no branch that reads it",
                            describe(&writer),
                            describe(&reader)
                        ),
                    ),
                }
            }
            (Schema::Record(w), Schema::Record(r)) => {
                self.check_record(path, &writer, &reader, w, r)
            }
            (Schema::Enum(w), Schema::Enum(r)) => self.check_enum(path, &writer, &reader, w, r),
            (Schema::Array(w), Schema::Array(r)) => {
                self.check(&format!("{path}[]"), &w.items, &r.items)
            }
            (Schema::Map(w), Schema::Map(r)) => {
                self.check(&format!("{path}{{}}"), &w.types, &r.types)
            }
            _ => self.check_scalar(path, &writer, &reader),
        }
    }

    fn check_record(
        &mut self,
        path: &str,
        writer: &Schema,
        reader: &Schema,
        w: &RecordSchema,
        r: &RecordSchema,
    ) {
        if !names_match(writer, reader) {
            return self.violation(
                path,
                format!(
                    "record renamed from {} to {} without an alias",
                    w.name.fullname(None),
                    r.name.fullname(None)
                ),
            );
        }
        let pair = (w.name.fullname(None), r.name.fullname(None));
        if !self.in_progress.insert(pair.clone()) {
            return; // recursive record: this pair is already being checked further up
        }
        for field in &r.fields {
            let field_path = join(path, &field.name);
            let written = w
                .fields
                .iter()
                .find(|wf| wf.name == field.name || field.aliases.contains(&wf.name));
            match written {
                Some(wf) => self.check(&field_path, &wf.schema, &field.schema),
                None if field.default.is_some() => {}
                None => self.violation(
                    &field_path,
                    "added without a default: old records do not have it".to_owned(),
                ),
            }
        }
        self.in_progress.remove(&pair);
    }

    fn check_enum(
        &mut self,
        path: &str,
        writer: &Schema,
        reader: &Schema,
        w: &EnumSchema,
        r: &EnumSchema,
    ) {
        if !names_match(writer, reader) {
            return self.violation(
                path,
                format!(
                    "enum renamed from {} to {} without an alias",
                    w.name.fullname(None),
                    r.name.fullname(None)
                ),
            );
        }
        if r.default.is_some() {
            return; // unknown symbols read as the default
        }
        let missing: Vec<&str> = w
            .symbols
            .iter()
            .filter(|symbol| !r.symbols.contains(symbol))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            self.violation(
                path,
                format!(
                    "enum {} lost symbol(s) {} and has no default to read them as",
                    r.name.fullname(None),
                    missing.join(", ")
                ),
            );
        }
    }

    fn check_scalar(&mut self, path: &str, writer: &Schema, reader: &Schema) {
        let (wb, rb) = (base(writer), base(reader));
        if !promotes(wb, rb) {
            return self.violation(
                path,
                format!(
                    "type changed from {} to {}, which Avro cannot promote",
                    describe(writer),
                    describe(reader)
                ),
            );
        }
        if !names_match(writer, reader) {
            return self.violation(
                path,
                format!(
                    "renamed from {} to {} without an alias",
                    describe(writer),
                    describe(reader)
                ),
            );
        }
        if let (Schema::Fixed(w), Schema::Fixed(r)) = (writer, reader)
            && w.size != r.size
        {
            return self.violation(
                path,
                format!("fixed size changed from {} to {}", w.size, r.size),
            );
        }
        if let (Some(wl), Some(rl)) = (logical(writer), logical(reader))
            && wl != rl
        {
            self.violation(
                path,
                format!(
                    "logical type changed from {wl} to {rl}: old values would read as other values"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
