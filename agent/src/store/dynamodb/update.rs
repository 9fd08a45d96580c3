//! Writing DynamoDB update expressions: names and values as placeholders,
//! and conditions on what a batch read.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Update};

use super::item::{Item, n};

/// An `UpdateExpression` with placeholders for every name and value (some
/// of our attribute names are DynamoDB reserved words).
#[derive(Default)]
pub struct UpdateBuilder {
    sets: Vec<String>,
    adds: Vec<String>,
    removes: Vec<String>,
    names: HashMap<String, String>,
    values: Item,
}

impl UpdateBuilder {
    pub fn name(&mut self, attr: &str) -> String {
        let next = format!("#n{}", self.names.len());
        self.names.entry(attr.to_owned()).or_insert(next).clone()
    }

    pub fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    /// The condition that the stored number `attr` is still what was read
    /// (`None`: it was absent).
    pub fn still(&mut self, attr: &str, read: Option<i64>) -> String {
        let name = self.name(attr);
        match read {
            Some(v) => {
                let value = self.value(n(v));
                format!("{name} = {value}")
            }
            None => format!("attribute_not_exists({name})"),
        }
    }

    pub fn set(&mut self, attr: &str, v: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets.push(format!("{name} = {value}"));
    }

    pub fn set_if_absent(&mut self, attr: &str, v: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets
            .push(format!("{name} = if_not_exists({name}, {value})"));
    }

    pub fn add(&mut self, attr: &str, delta: i64) {
        let (name, value) = (self.name(attr), self.value(n(delta)));
        self.adds.push(format!("{name} {value}"));
    }

    pub fn remove(&mut self, attr: &str) {
        let name = self.name(attr);
        self.removes.push(name);
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.adds.is_empty() && self.removes.is_empty()
    }

    pub fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.adds.is_empty() {
            parts.push(format!("ADD {}", self.adds.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        parts.join(" ")
    }

    /// The update of the item at `key`; the caller may add a condition
    /// using names from [`UpdateBuilder::name`] before `build()`.
    pub(super) fn finish(
        self,
        table: &str,
        key: Item,
    ) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        let expression = self.expression();
        let names = self
            .names
            .into_iter()
            .map(|(attr, ph)| (ph, attr))
            .collect();
        let builder = Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names));
        if self.values.is_empty() {
            builder
        } else {
            builder.set_expression_attribute_values(Some(self.values))
        }
    }
}
