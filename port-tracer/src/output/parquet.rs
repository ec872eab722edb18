//! Parquet: the lifetime table of [`super::columns`] (one row per lifetime, the JSONL
//! lifetime fields as columns), through the parquet crate's low-level column writer.
//!
//! Rows are buffered column by column and written as a row group every
//! [`ROW_GROUP_ROWS`], so memory stays bounded however long the trace. The parquet writer
//! writes into a byte buffer that is handed to the real output after each row group: its
//! errors are then plain I/O errors of that output, and the writer never owns it. Pages are
//! zstd-compressed (every Parquet reader of note reads zstd).
//!
//! One file (`--output`) is [`Parquet`]; a directory of Hive-style partitions for many
//! hosts (`export --output-dir`) is [`partitioned::Partitioned`], of the same tables.

use std::{
    io::{self, Write},
    sync::Arc,
};

use ::parquet::{
    basic::{Compression, LogicalType, Repetition, Type as PhysicalType, ZstdLevel},
    data_type::{BoolType, ByteArray, ByteArrayType, Int32Type, Int64Type},
    errors::ParquetError,
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};

use super::{Printer, RunInfo, Spec};
use crate::{
    cgroups::{Cgroups, Lookup},
    event::Event,
    lifetime::Lifetime,
    output::columns::{ColumnType, Row, Value, LIFETIME_COLUMNS},
    summary::Summary,
};

pub const SPEC: Spec = Spec {
    name: "parquet",
    help: "Parquet (needs --output; export also --output-dir): one row per lifetime, the JSONL \
           lifetime fields as typed columns, zstd-compressed, for DuckDB, pandas or Spark",
    binary: true,
    for_tools: true,
    printer: |out, _, cgroups| Box::new(Parquet::new(out).with_cgroups(cgroups)),
    partitioned: Some(|partitioning, clock, cgroups| {
        Ok(Box::new(partitioned::Partitioned::open(
            partitioning,
            clock,
            cgroups,
        )?))
    }),
};

pub mod partitioned;

/// Writes lifetimes as a Parquet file, a row group at a time.
pub struct Parquet<W: Write> {
    out: W,
    table: ParquetTable,
    cgroups: Lookup,
    run: RunInfo,
}

impl<W: Write> Parquet<W> {
    pub fn new(out: W) -> Self {
        Parquet {
            out,
            table: ParquetTable::new(ROW_GROUP_ROWS),
            cgroups: Lookup::default(),
            run: RunInfo::default(),
        }
    }

    /// Owners' cgroups named from `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = Lookup::new(cgroups);
        self
    }
}

impl<W: Write> Printer for Parquet<W> {
    fn set_run(&mut self, run: &RunInfo) {
        self.run = run.clone();
    }

    /// Events are in the lifetimes' rows.
    fn event(&mut self, _: &Event) -> io::Result<()> {
        Ok(())
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        let cgroup = self.cgroups.get(lt.owner.cgroup_id);
        let row = Row {
            lt,
            cgroup: cgroup.as_deref(),
            run: &self.run,
        };
        self.table.push(&row, &mut self.out)
    }

    /// No summary: the rows left and the file's footer.
    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        self.table.finish(&mut self.out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Rows per row group: groups large enough for readers to scan efficiently, while the cells
/// buffered for one (some 530 bytes a row, mostly the text cells) stay near 35 MB.
pub const ROW_GROUP_ROWS: usize = 1 << 16;

/// One column's cells of the current row group, in its Parquet physical type (unsigned
/// values keep their bits; their logical type says they are unsigned).
enum Cells {
    /// `defs` as for `Int64`.
    Text {
        values: Vec<ByteArray>,
        defs: Option<Vec<i16>>,
    },
    /// `defs` as for `Int64`.
    Int32 {
        values: Vec<i32>,
        defs: Option<Vec<i16>>,
    },
    /// `defs` (1 present, 0 null) for nullable columns; `values` holds only those present.
    Int64 {
        values: Vec<i64>,
        defs: Option<Vec<i16>>,
    },
    Bool(Vec<bool>),
}

impl Cells {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Text => Cells::Text {
                values: Vec::new(),
                defs: None,
            },
            ColumnType::OptionalText => Cells::Text {
                values: Vec::new(),
                defs: Some(Vec::new()),
            },
            ColumnType::U16 | ColumnType::U32 => Cells::Int32 {
                values: Vec::new(),
                defs: None,
            },
            ColumnType::OptionalU32 => Cells::Int32 {
                values: Vec::new(),
                defs: Some(Vec::new()),
            },
            ColumnType::U64 => Cells::Int64 {
                values: Vec::new(),
                defs: None,
            },
            ColumnType::OptionalU64 => Cells::Int64 {
                values: Vec::new(),
                defs: Some(Vec::new()),
            },
            ColumnType::Bool => Cells::Bool(Vec::new()),
        }
    }

    /// Adds a cell; returns what it takes unencoded (a text's bytes and its length, an
    /// integer's width; nulls and booleans 1), for estimates of a file's size.
    fn push(&mut self, value: Value) -> u64 {
        let raw = match (&*self, &value) {
            (_, Value::Text(s)) => s.len() as u64 + 4,
            (Cells::Int32 { .. }, Value::Uint(_)) => 4,
            (Cells::Int64 { .. }, Value::Uint(_)) => 8,
            _ => 1,
        };
        match (self, value) {
            (Cells::Text { values, defs }, Value::Text(s)) => {
                values.push(s.into_owned().into_bytes().into());
                if let Some(defs) = defs {
                    defs.push(1);
                }
            }
            (
                Cells::Text {
                    defs: Some(defs), ..
                },
                Value::Null,
            ) => defs.push(0),
            (Cells::Int32 { values, defs }, Value::Uint(x)) => {
                values.push(x as u32 as i32);
                if let Some(defs) = defs {
                    defs.push(1);
                }
            }
            (
                Cells::Int32 {
                    defs: Some(defs), ..
                },
                Value::Null,
            ) => defs.push(0),
            (Cells::Int64 { values, defs }, Value::Uint(x)) => {
                values.push(x as i64);
                if let Some(defs) = defs {
                    defs.push(1);
                }
            }
            (
                Cells::Int64 {
                    defs: Some(defs), ..
                },
                Value::Null,
            ) => defs.push(0),
            (Cells::Bool(v), Value::Bool(b)) => v.push(b),
            (_, value) => unreachable!("{value:?} does not fit its column's declared type"),
        }
        raw
    }

    fn clear(&mut self) {
        match self {
            Cells::Text { values, defs } => {
                values.clear();
                if let Some(defs) = defs {
                    defs.clear();
                }
            }
            Cells::Int32 { values, defs } => {
                values.clear();
                if let Some(defs) = defs {
                    defs.clear();
                }
            }
            Cells::Int64 { values, defs } => {
                values.clear();
                if let Some(defs) = defs {
                    defs.clear();
                }
            }
            Cells::Bool(v) => v.clear(),
        }
    }
}

/// The Parquet type of a column.
fn field(name: &str, ty: ColumnType) -> Result<Type, ParquetError> {
    let (physical, logical) = match ty {
        ColumnType::Text | ColumnType::OptionalText => {
            (PhysicalType::BYTE_ARRAY, Some(LogicalType::String))
        }
        ColumnType::U16 => (PhysicalType::INT32, Some(LogicalType::integer(16, false))),
        ColumnType::U32 | ColumnType::OptionalU32 => {
            (PhysicalType::INT32, Some(LogicalType::integer(32, false)))
        }
        ColumnType::U64 | ColumnType::OptionalU64 => {
            (PhysicalType::INT64, Some(LogicalType::integer(64, false)))
        }
        ColumnType::Bool => (PhysicalType::BOOLEAN, None),
    };
    let repetition = if matches!(
        ty,
        ColumnType::OptionalU32 | ColumnType::OptionalU64 | ColumnType::OptionalText
    ) {
        Repetition::OPTIONAL
    } else {
        Repetition::REQUIRED
    };
    Type::primitive_type_builder(name, physical)
        .with_repetition(repetition)
        .with_logical_type(logical)
        .build()
}

/// The schema: a message of the lifetime columns.
fn schema() -> Result<Type, ParquetError> {
    let fields = LIFETIME_COLUMNS
        .iter()
        .map(|c| field(c.name, c.ty).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Type::group_type_builder("lifetime")
        .with_fields(fields)
        .build()
}

/// Lifetimes on their way to a Parquet file.
pub struct ParquetTable {
    max_rows: usize,
    rows: usize,
    cells: Vec<Cells>,
    /// Started with the first row group (or at the end of an empty run).
    writer: Option<SerializedFileWriter<Vec<u8>>>,
    finished: bool,
    sizes: TableSizes,
}

/// How much a table wrote, and what its cells take unencoded: what a file's size is
/// estimated from before its rows are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Bytes handed to the output (row groups written, and the footer once finished).
    pub written: u64,
    /// The unencoded size of the rows in those row groups.
    pub written_raw: u64,
    /// The unencoded size of the rows buffered, not written yet.
    pub buffered_raw: u64,
    /// Rows taken, written or not.
    pub rows: u64,
}

impl ParquetTable {
    /// A table that writes a row group every `max_rows` rows (at least one).
    pub fn new(max_rows: usize) -> Self {
        ParquetTable {
            max_rows: max_rows.max(1),
            rows: 0,
            cells: LIFETIME_COLUMNS.iter().map(|c| Cells::new(c.ty)).collect(),
            writer: None,
            finished: false,
            sizes: TableSizes::default(),
        }
    }

    /// What it wrote and holds so far.
    pub fn sizes(&self) -> TableSizes {
        self.sizes
    }

    /// Adds a lifetime's row; writes the row group to `out` when it is full.
    pub fn push(&mut self, row: &Row<'_>, out: &mut impl Write) -> io::Result<()> {
        for (column, cells) in LIFETIME_COLUMNS.iter().zip(&mut self.cells) {
            self.sizes.buffered_raw += cells.push((column.value)(row));
        }
        self.rows += 1;
        self.sizes.rows += 1;
        if self.rows >= self.max_rows {
            self.write_row_group(out)?;
        }
        Ok(())
    }

    /// Writes the rows left and the footer. Only the first call writes.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if self.rows > 0 {
            self.write_row_group(out)?;
        }
        let writer = started(&mut self.writer)?;
        writer.finish()?;
        self.sizes.written += hand_over(writer, out)?;
        Ok(())
    }

    fn write_row_group(&mut self, out: &mut impl Write) -> io::Result<()> {
        let writer = started(&mut self.writer)?;
        let mut group = writer.next_row_group()?;
        for cells in &mut self.cells {
            let mut column = group
                .next_column()?
                .ok_or_else(|| io::Error::other("parquet schema has fewer columns than rows"))?;
            match cells {
                Cells::Text { values, defs } => {
                    column
                        .typed::<ByteArrayType>()
                        .write_batch(values, defs.as_deref(), None)
                }
                Cells::Int32 { values, defs } => {
                    column
                        .typed::<Int32Type>()
                        .write_batch(values, defs.as_deref(), None)
                }
                Cells::Int64 { values, defs } => {
                    column
                        .typed::<Int64Type>()
                        .write_batch(values, defs.as_deref(), None)
                }
                Cells::Bool(v) => column.typed::<BoolType>().write_batch(v, None, None),
            }?;
            column.close()?;
            cells.clear();
        }
        group.close()?;
        self.rows = 0;
        self.sizes.written += hand_over(writer, out)?;
        self.sizes.written_raw += std::mem::take(&mut self.sizes.buffered_raw);
        Ok(())
    }
}

/// The file writer, started on first use.
fn started(
    writer: &mut Option<SerializedFileWriter<Vec<u8>>>,
) -> io::Result<&mut SerializedFileWriter<Vec<u8>>> {
    let w = match writer.take() {
        Some(w) => w,
        None => SerializedFileWriter::new(
            Vec::new(),
            Arc::new(schema()?),
            Arc::new(
                WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build(),
            ),
        )?,
    };
    Ok(writer.insert(w))
}

/// Moves what the writer produced so far to `out`; returns how many bytes. Taking bytes
/// out of its buffer leaves its own count of bytes written, which the footer's offsets
/// come from, untouched.
fn hand_over(writer: &mut SerializedFileWriter<Vec<u8>>, out: &mut impl Write) -> io::Result<u64> {
    writer.flush()?;
    let bytes = writer.inner_mut();
    out.write_all(bytes)?;
    let n = bytes.len() as u64;
    bytes.clear();
    Ok(n)
}

#[cfg(test)]
mod tests;
