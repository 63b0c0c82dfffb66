//! Parquet datasets, as the Hugging Face Hub serves them (`refs/convert/parquet`, or uploaded by
//! `datasets.push_to_hub`): each row is read as a record of its columns (strings, lists, structs)
//! and goes through the same forms as a `.jsonl` record ([`super::records`]). Snappy-compressed
//! files (pyarrow's default) read everywhere; zstd-compressed ones natively only.

use bytes::Bytes;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

/// A Parquet value as JSON: strings, numbers, booleans, lists, structs (objects) and maps
/// (objects keyed by the key's text); other logical types (dates, decimals) as their text.
fn field_json(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float16(x) => f64::from(x.to_f32()).into(),
        Field::Float(x) => f64::from(*x).into(),
        Field::Double(x) => (*x).into(),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(format!("<{} bytes of binary data>", b.len())),
        },
        Field::Group(row) => Value::Object(row_json(row)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, field_json(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

fn row_json(row: &Row) -> Map<String, Value> {
    row.get_column_iter()
        .map(|(name, f)| (name.clone(), field_json(f)))
        .collect()
}

/// What a Parquet reader error means for the user.
fn reader_err(e: parquet::errors::ParquetError) -> String {
    let msg = e.to_string();
    if msg.contains("ZSTD") || msg.contains("zstd") {
        return format!(
            "{msg}: this build reads zstd-compressed Parquet only natively (the browser reads \
             snappy or uncompressed files); use the tinytune CLI, or rewrite the file with \
             snappy (pyarrow: pq.write_table(table, path, compression=\"snappy\")) or as .jsonl"
        );
    }
    if msg.contains("Disabled feature") || msg.contains("not supported") {
        return format!(
            "{msg}: rewrite the file with snappy or zstd compression (pyarrow: \
             pq.write_table(table, path, compression=\"snappy\")) or as .jsonl"
        );
    }
    format!("not a readable Parquet file: {msg}")
}

/// Calls `each(row_index, record)` for every row of a Parquet file (row indices from 0).
/// Errors: `Err((None, msg))` for the file, `Err((Some(row), msg))` for a row, as `each`'s own.
pub(crate) fn for_each_row(
    bytes: &[u8],
    mut each: impl FnMut(usize, &Map<String, Value>) -> Result<(), (Option<usize>, String)>,
) -> Result<usize, (Option<usize>, String)> {
    let reader = SerializedFileReader::new(Bytes::copy_from_slice(bytes))
        .map_err(|e| (None, reader_err(e)))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| (None, reader_err(e)))?;
    let mut n = 0;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| (Some(i), reader_err(e)))?;
        each(i, &row_json(&row))?;
        n += 1;
    }
    Ok(n)
}
