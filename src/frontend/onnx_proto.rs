//! Decoding ONNX model files into a small, checked, in-memory [`Model`].
//!
//! # Why hand-written protobuf structs
//!
//! An ONNX file is a serialized `onnx.ModelProto` (protobuf, `syntax = "proto2"`). The
//! [`proto`] submodule declares the messages by hand with `prost` derive attributes instead
//! of generating them with `prost-build`, so the crate builds with `cargo` alone: no `protoc`,
//! no build script, no vendored `.proto` file. The field numbers are copied from `onnx.proto`
//! of ONNX 1.23 (IR version 14); protobuf skips any field a reader does not declare, so the
//! subset below reads files written by any ONNX version.
//!
//! # Supported subset of `onnx.proto`
//!
//! * `ModelProto`: `ir_version`, `opset_import`, `producer_name`, `producer_version`,
//!   `domain`, `model_version`, `graph`, `metadata_props`.
//! * `GraphProto`: `node`, `name`, `initializer`, `input`, `output`, `value_info`.
//! * `NodeProto`: `input`, `output`, `name`, `op_type`, `domain`, `attribute`.
//! * `AttributeProto`: `name`, `ref_attr_name`, `type`, `f`, `i`, `s`, `t`, `floats`, `ints`,
//!   `strings`, `tensors`. Graph, sparse-tensor and type-proto attributes are skipped
//!   (they only occur with control flow and other ops kinkcheck does not handle).
//! * `TensorProto`: `dims`, `data_type`, `float_data`, `int32_data`, `int64_data`, `name`,
//!   `raw_data`, `double_data`, `uint64_data`, `external_data`, `data_location`.
//! * `ValueInfoProto`, `TypeProto` (tensor and sparse-tensor types), `TensorShapeProto`,
//!   `OperatorSetIdProto`, `StringStringEntryProto`.
//!
//! `doc_string` fields are deliberately not declared: they are skipped unread, so
//! free-form documentation (which C++ writers do not check for valid UTF-8) can never make a
//! model unreadable. `SparseTensorProto`, `FunctionProto` and `TrainingInfoProto` are
//! likewise skipped.
//!
//! # Decoded model
//!
//! [`decode`] turns the protobuf into a [`Model`]: tensors of element type FLOAT, DOUBLE,
//! INT32 or INT64 become row-major `Vec<f64>` (float32 values are widened exactly; int64
//! values beyond 2^53 are rounded), `Constant` nodes are folded into [`Model::constants`],
//! and graph inputs that merely repeat an initializer are dropped. Everything that cannot be
//! represented faithfully (external data, other element types, inconsistent lengths, NaN/Inf)
//! is an [`OnnxError`] with a one-line message. Decoding never panics, whatever the input.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use prost::Message;

/// Hand-written `prost` messages for the subset of `onnx.proto` that kinkcheck reads.
///
/// Field names, numbers and scalar types match `onnx.proto` exactly; the layout (nested
/// messages in snake_case modules, `Option` for proto2 `optional`) follows what
/// `prost-build` would generate. Repeated scalar fields that `onnx.proto` does not mark
/// `[packed = true]` are declared `packed = "false"`, so that encoding (used by the tests)
/// produces the proto2 wire format; decoding accepts both forms anyway.
pub mod proto {
    /// `onnx.ModelProto`: the top-level message of an `.onnx` file.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        /// IR version the model targets (field 1).
        #[prost(int64, optional, tag = "1")]
        pub ir_version: Option<i64>,
        /// Operator sets the graph's nodes bind to (field 8).
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
        /// Tool that wrote the model (field 2).
        #[prost(string, optional, tag = "2")]
        pub producer_name: Option<String>,
        /// Version of that tool (field 3).
        #[prost(string, optional, tag = "3")]
        pub producer_version: Option<String>,
        /// Reverse-DNS domain of the model (field 4).
        #[prost(string, optional, tag = "4")]
        pub domain: Option<String>,
        /// Version of the model itself (field 5).
        #[prost(int64, optional, tag = "5")]
        pub model_version: Option<i64>,
        /// The computation graph (field 7).
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        /// Free-form key/value metadata (field 14).
        #[prost(message, repeated, tag = "14")]
        pub metadata_props: Vec<StringStringEntryProto>,
    }

    /// `onnx.OperatorSetIdProto`: one imported operator set.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        /// Operator-set domain; empty or `"ai.onnx"` for the default set (field 1).
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        /// Operator-set version (field 2).
        #[prost(int64, optional, tag = "2")]
        pub version: Option<i64>,
    }

    /// `onnx.StringStringEntryProto`: a key/value pair.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StringStringEntryProto {
        /// Key (field 1).
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        /// Value (field 2).
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }

    /// `onnx.GraphProto`: nodes in topological order plus named tensors.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        /// Nodes, topologically sorted (field 1).
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        /// Graph name (field 2).
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        /// Constant tensors, usually the model's parameters (field 5).
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        /// Graph inputs; before IR 4 these also list every initializer (field 11).
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        /// Graph outputs (field 12).
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
        /// Optional type/shape information for intermediate values (field 13).
        #[prost(message, repeated, tag = "13")]
        pub value_info: Vec<ValueInfoProto>,
    }

    /// `onnx.NodeProto`: one operator application.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        /// Input value names; an empty string marks an omitted optional input (field 1).
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        /// Output value names (field 2).
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        /// Optional node name (field 3).
        #[prost(string, optional, tag = "3")]
        pub name: Option<String>,
        /// Operator name, e.g. `"Gemm"` (field 4).
        #[prost(string, optional, tag = "4")]
        pub op_type: Option<String>,
        /// Operator-set domain; empty for the default ONNX domain (field 7).
        #[prost(string, optional, tag = "7")]
        pub domain: Option<String>,
        /// Attributes (field 5).
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
    }

    /// `onnx.AttributeProto`: a named attribute of a node.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        /// Attribute name (field 1).
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// Reference to an attribute of an enclosing function (field 21).
        #[prost(string, optional, tag = "21")]
        pub ref_attr_name: Option<String>,
        /// Which value field is in use (field 20); absent in IR version 1.
        #[prost(enumeration = "attribute_proto::AttributeType", optional, tag = "20")]
        pub r#type: Option<i32>,
        /// FLOAT value (field 2).
        #[prost(float, optional, tag = "2")]
        pub f: Option<f32>,
        /// INT value (field 3).
        #[prost(int64, optional, tag = "3")]
        pub i: Option<i64>,
        /// STRING value, UTF-8 bytes (field 4).
        #[prost(bytes = "vec", optional, tag = "4")]
        pub s: Option<Vec<u8>>,
        /// TENSOR value (field 5).
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        /// FLOATS value (field 7).
        #[prost(float, repeated, packed = "false", tag = "7")]
        pub floats: Vec<f32>,
        /// INTS value (field 8).
        #[prost(int64, repeated, packed = "false", tag = "8")]
        pub ints: Vec<i64>,
        /// STRINGS value (field 9).
        #[prost(bytes = "vec", repeated, tag = "9")]
        pub strings: Vec<Vec<u8>>,
        /// TENSORS value (field 10).
        #[prost(message, repeated, tag = "10")]
        pub tensors: Vec<TensorProto>,
    }

    /// Nested types of [`AttributeProto`].
    pub mod attribute_proto {
        /// `onnx.AttributeProto.AttributeType`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum AttributeType {
            /// Not set (IR version 1 files).
            Undefined = 0,
            /// `f`.
            Float = 1,
            /// `i`.
            Int = 2,
            /// `s`.
            String = 3,
            /// `t`.
            Tensor = 4,
            /// `g` (not decoded).
            Graph = 5,
            /// `sparse_tensor` (not decoded).
            SparseTensor = 11,
            /// `tp` (not decoded).
            TypeProto = 13,
            /// `floats`.
            Floats = 6,
            /// `ints`.
            Ints = 7,
            /// `strings`.
            Strings = 8,
            /// `tensors`.
            Tensors = 9,
            /// `graphs` (not decoded).
            Graphs = 10,
            /// `sparse_tensors` (not decoded).
            SparseTensors = 12,
            /// `type_protos` (not decoded).
            TypeProtos = 14,
        }
    }

    /// `onnx.TensorProto`: a dense tensor.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// Shape, outermost first (field 1).
        #[prost(int64, repeated, packed = "false", tag = "1")]
        pub dims: Vec<i64>,
        /// Element type, a [`tensor_proto::DataType`] value (field 2).
        #[prost(int32, optional, tag = "2")]
        pub data_type: Option<i32>,
        /// FLOAT (and COMPLEX64) elements (field 4).
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        /// INT32 elements, also the carrier of smaller integer/float16 types (field 5).
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        /// INT64 elements (field 7).
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        /// Tensor name (field 8).
        #[prost(string, optional, tag = "8")]
        pub name: Option<String>,
        /// Elements as fixed-width little-endian bytes (field 9).
        /// (`Bytes`: decoded from a file's bytes it is a view into them, not a copy.)
        #[prost(bytes = "bytes", optional, tag = "9")]
        pub raw_data: Option<bytes::Bytes>,
        /// DOUBLE (and COMPLEX128) elements (field 10).
        #[prost(double, repeated, tag = "10")]
        pub double_data: Vec<f64>,
        /// UINT32/UINT64 elements (field 11).
        #[prost(uint64, repeated, tag = "11")]
        pub uint64_data: Vec<u64>,
        /// Location of externally stored data: `location`, `offset`, ... (field 13).
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<StringStringEntryProto>,
        /// Where the data lives (field 14).
        #[prost(enumeration = "tensor_proto::DataLocation", optional, tag = "14")]
        pub data_location: Option<i32>,
    }

    /// Nested types of [`TensorProto`].
    pub mod tensor_proto {
        /// `onnx.TensorProto.DataType`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        #[allow(missing_docs)]
        pub enum DataType {
            Undefined = 0,
            Float = 1,
            Uint8 = 2,
            Int8 = 3,
            Uint16 = 4,
            Int16 = 5,
            Int32 = 6,
            Int64 = 7,
            String = 8,
            Bool = 9,
            Float16 = 10,
            Double = 11,
            Uint32 = 12,
            Uint64 = 13,
            Complex64 = 14,
            Complex128 = 15,
            Bfloat16 = 16,
            Float8e4m3fn = 17,
            Float8e4m3fnuz = 18,
            Float8e5m2 = 19,
            Float8e5m2fnuz = 20,
            Uint4 = 21,
            Int4 = 22,
            Float4e2m1 = 23,
            Float8e8m0 = 24,
            Uint2 = 25,
            Int2 = 26,
            Float6e2m3 = 27,
            Float6e3m2 = 28,
        }

        impl DataType {
            /// The name `onnx.proto` gives this type, e.g. `"FLOAT16"`.
            pub fn proto_name(self) -> &'static str {
                match self {
                    DataType::Undefined => "UNDEFINED",
                    DataType::Float => "FLOAT",
                    DataType::Uint8 => "UINT8",
                    DataType::Int8 => "INT8",
                    DataType::Uint16 => "UINT16",
                    DataType::Int16 => "INT16",
                    DataType::Int32 => "INT32",
                    DataType::Int64 => "INT64",
                    DataType::String => "STRING",
                    DataType::Bool => "BOOL",
                    DataType::Float16 => "FLOAT16",
                    DataType::Double => "DOUBLE",
                    DataType::Uint32 => "UINT32",
                    DataType::Uint64 => "UINT64",
                    DataType::Complex64 => "COMPLEX64",
                    DataType::Complex128 => "COMPLEX128",
                    DataType::Bfloat16 => "BFLOAT16",
                    DataType::Float8e4m3fn => "FLOAT8E4M3FN",
                    DataType::Float8e4m3fnuz => "FLOAT8E4M3FNUZ",
                    DataType::Float8e5m2 => "FLOAT8E5M2",
                    DataType::Float8e5m2fnuz => "FLOAT8E5M2FNUZ",
                    DataType::Uint4 => "UINT4",
                    DataType::Int4 => "INT4",
                    DataType::Float4e2m1 => "FLOAT4E2M1",
                    DataType::Float8e8m0 => "FLOAT8E8M0",
                    DataType::Uint2 => "UINT2",
                    DataType::Int2 => "INT2",
                    DataType::Float6e2m3 => "FLOAT6E2M3",
                    DataType::Float6e3m2 => "FLOAT6E3M2",
                }
            }
        }

        /// `onnx.TensorProto.DataLocation`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum DataLocation {
            /// Data is inside the tensor (`raw_data` or a typed field).
            Default = 0,
            /// Data is in a separate file described by `external_data`.
            External = 1,
        }
    }

    /// `onnx.ValueInfoProto`: name and type of a graph input, output or intermediate value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        /// Value name (field 1).
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// Value type (field 2).
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    /// `onnx.TypeProto`, restricted to the tensor alternatives of its `value` oneof.
    ///
    /// Sequence, map, optional and opaque types (fields 4, 5, 9, 7) are skipped when read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        /// Standard denotation (field 6).
        #[prost(string, optional, tag = "6")]
        pub denotation: Option<String>,
        /// The `value` oneof.
        #[prost(oneof = "type_proto::Value", tags = "1, 8")]
        pub value: Option<type_proto::Value>,
    }

    /// Nested types of [`TypeProto`].
    pub mod type_proto {
        /// `onnx.TypeProto.Tensor`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Tensor {
            /// Element type, a `TensorProto.DataType` value (field 1).
            #[prost(int32, optional, tag = "1")]
            pub elem_type: Option<i32>,
            /// Shape; absent when even the rank is unknown (field 2).
            #[prost(message, optional, tag = "2")]
            pub shape: Option<super::TensorShapeProto>,
        }

        /// `onnx.TypeProto.SparseTensor`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct SparseTensor {
            /// Element type (field 1).
            #[prost(int32, optional, tag = "1")]
            pub elem_type: Option<i32>,
            /// Shape (field 2).
            #[prost(message, optional, tag = "2")]
            pub shape: Option<super::TensorShapeProto>,
        }

        /// The declared alternatives of `TypeProto.value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// `tensor_type` (field 1).
            #[prost(message, tag = "1")]
            TensorType(Tensor),
            /// `sparse_tensor_type` (field 8).
            #[prost(message, tag = "8")]
            SparseTensorType(SparseTensor),
        }
    }

    /// `onnx.TensorShapeProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        /// One entry per axis (field 1).
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<tensor_shape_proto::Dimension>,
    }

    /// Nested types of [`TensorShapeProto`].
    pub mod tensor_shape_proto {
        /// `onnx.TensorShapeProto.Dimension`.
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Dimension {
            /// Standard denotation (field 3).
            #[prost(string, optional, tag = "3")]
            pub denotation: Option<String>,
            /// The `value` oneof; absent for an unknown dimension.
            #[prost(oneof = "dimension::Value", tags = "1, 2")]
            pub value: Option<dimension::Value>,
        }

        /// Nested types of [`Dimension`].
        pub mod dimension {
            /// `onnx.TensorShapeProto.Dimension.value`.
            #[derive(Clone, PartialEq, prost::Oneof)]
            pub enum Value {
                /// A known size (field 1).
                #[prost(int64, tag = "1")]
                DimValue(i64),
                /// A symbolic size such as `"batch"` (field 2).
                #[prost(string, tag = "2")]
                DimParam(String),
            }
        }
    }
}

use proto::attribute_proto::AttributeType;
use proto::tensor_proto::{DataLocation, DataType};

/// Why an ONNX file could not be decoded. Every variant displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a protobuf `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(prost::DecodeError),
    /// The bytes decode, but contain no graph (e.g. an empty or unrelated file).
    #[error("not an ONNX model: it has no graph")]
    MissingGraph,
    /// A tensor's data lives in a separate file, but the model was decoded from bytes
    /// without a base folder ([`decode_with_base`] with `None`).
    #[error(
        "tensor '{tensor}' uses external data, which needs the model's folder (load the model \
         from a file, or give a base folder)"
    )]
    ExternalData {
        /// Tensor name.
        tensor: String,
    },
    /// A tensor's external data reference is invalid, unsafe or unreadable: a location that
    /// is absolute, contains `..`, or resolves (also through symbolic links) outside the
    /// model's folder; a missing or malformed `location`/`offset`/`length`; a length that
    /// does not match the tensor's dims; a file too short.
    #[error("tensor '{tensor}': external data {msg}")]
    ExternalDataInvalid {
        /// Tensor name.
        tensor: String,
        /// What is wrong, one line.
        msg: String,
    },
    /// A tensor's element type is not FLOAT, DOUBLE, INT32 or INT64.
    #[error(
        "tensor '{tensor}' has unsupported data type {data_type} ({type_name}); \
         only FLOAT, DOUBLE, INT32 and INT64 are supported"
    )]
    UnsupportedDataType {
        /// Tensor name.
        tensor: String,
        /// The `TensorProto.data_type` number.
        data_type: i32,
        /// Its `onnx.proto` name, or `"unknown"`.
        type_name: &'static str,
    },
    /// A tensor has a negative dimension, or more elements than fit in memory.
    #[error("tensor '{tensor}' has invalid dims {dims:?}")]
    InvalidDims {
        /// Tensor name.
        tensor: String,
        /// The dims as stored.
        dims: Vec<i64>,
    },
    /// `raw_data` holds a different number of bytes than the dims require.
    #[error(
        "tensor '{tensor}': raw_data has {actual} bytes but dims {dims:?} of {type_name} need {expected}"
    )]
    RawDataLength {
        /// Tensor name.
        tensor: String,
        /// Tensor dims.
        dims: Vec<usize>,
        /// Element type name.
        type_name: &'static str,
        /// Required byte count.
        expected: usize,
        /// Stored byte count.
        actual: usize,
    },
    /// A typed data field (`float_data`, ...) holds a different number of values than the
    /// dims require.
    #[error("tensor '{tensor}': {field} has {actual} values but dims {dims:?} need {expected}")]
    DataLength {
        /// Tensor name.
        tensor: String,
        /// Field name, e.g. `"float_data"`.
        field: &'static str,
        /// Tensor dims.
        dims: Vec<usize>,
        /// Required value count.
        expected: usize,
        /// Stored value count.
        actual: usize,
    },
    /// A floating-point tensor holds a NaN or an infinity.
    #[error("tensor '{tensor}' contains NaN or Inf")]
    NonFinite {
        /// Tensor name.
        tensor: String,
    },
}

/// Element type of a decoded [`Tensor`] as stored in the file (the values are `f64` anyway).
///
/// Integer tensors are typically shapes or indices (e.g. `Reshape`'s shape), not trainable
/// parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// float32.
    Float,
    /// float64.
    Double,
    /// int32.
    Int32,
    /// int64.
    Int64,
}

impl ElemType {
    /// Whether the stored type is an integer type.
    pub fn is_integer(self) -> bool {
        matches!(self, ElemType::Int32 | ElemType::Int64)
    }

    fn byte_width(self) -> usize {
        match self {
            ElemType::Float | ElemType::Int32 => 4,
            ElemType::Double | ElemType::Int64 => 8,
        }
    }

    fn proto_name(self) -> &'static str {
        match self {
            ElemType::Float => "FLOAT",
            ElemType::Double => "DOUBLE",
            ElemType::Int32 => "INT32",
            ElemType::Int64 => "INT64",
        }
    }
}

/// A dense tensor with its values widened to `f64`, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Name by which nodes refer to the tensor. For a folded `Constant` this is the node's
    /// output name.
    pub name: String,
    /// Shape; empty for a scalar.
    pub dims: Vec<usize>,
    /// The `dims.iter().product()` values, row-major; always finite.
    pub data: Vec<f64>,
    /// Element type in the file.
    pub elem_type: ElemType,
}

/// Name and shape of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// Value name.
    pub name: String,
    /// One entry per axis: `Some(n)` for a known size, `None` for a symbolic (e.g. `"batch"`)
    /// or unknown one. Empty when the file declares no shape (or the value is a scalar).
    pub dims: Vec<Option<usize>>,
}

/// A value of a node [`Attribute`].
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// FLOAT (float32 widened exactly, so `0.1` reads as `0.10000000149011612`).
    Float(f64),
    /// INT.
    Int(i64),
    /// FLOATS.
    Floats(Vec<f64>),
    /// INTS.
    Ints(Vec<i64>),
    /// STRING (invalid UTF-8 is replaced lossily).
    String(String),
    /// TENSOR.
    Tensor(Tensor),
    /// Any other kind (graphs, lists of strings/tensors, sparse tensors, types).
    Other,
}

/// A named attribute of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// Attribute name, e.g. `"transB"`.
    pub name: String,
    /// Its value.
    pub value: AttrValue,
}

/// One operator application of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Node name as stored; often empty.
    pub name: String,
    /// Operator, e.g. `"Gemm"`.
    pub op_type: String,
    /// Operator-set domain; empty (or `"ai.onnx"`) for standard ONNX operators.
    pub domain: String,
    /// Input value names; an empty string marks an omitted optional input.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes in file order.
    pub attributes: Vec<Attribute>,
    /// Position of the node in the file's node list (counting folded `Constant` nodes too).
    pub index: usize,
}

impl Node {
    /// The attribute called `name`, if any.
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    /// The FLOAT attribute called `name`.
    pub fn attr_f(&self, name: &str) -> Option<f64> {
        match self.attr(name)? {
            AttrValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// The INT attribute called `name`.
    pub fn attr_i(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            AttrValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The INTS attribute called `name`.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// The FLOATS attribute called `name`.
    pub fn attr_floats(&self, name: &str) -> Option<&[f64]> {
        match self.attr(name)? {
            AttrValue::Floats(v) => Some(v),
            _ => None,
        }
    }

    /// The STRING attribute called `name`.
    pub fn attr_s(&self, name: &str) -> Option<&str> {
        match self.attr(name)? {
            AttrValue::String(v) => Some(v),
            _ => None,
        }
    }

    /// A name for messages: the node's name, or `"<op_type> #<index>"` when it has none.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!("{} #{}", self.op_type, self.index)
        } else {
            self.name.clone()
        }
    }
}

/// A decoded ONNX model: its main graph with all tensors checked and converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `GraphProto.name`.
    pub graph_name: String,
    /// `ModelProto.ir_version` (0 if absent).
    pub ir_version: i64,
    /// Version of the default (`""`/`"ai.onnx"`) operator set, if imported. Operator
    /// semantics depend on it (e.g. `Clip` takes min/max as attributes before opset 11).
    pub opset_version: Option<i64>,
    /// The graph's initializers in file order: the model's parameters, plus any integer
    /// helper tensors (shapes, axes) the exporter stored as initializers — see
    /// [`Tensor::elem_type`].
    pub initializers: Vec<Tensor>,
    /// Tensors produced by folded `Constant` nodes, in node order, each named after the
    /// node's output. These are not parameters.
    pub constants: Vec<Tensor>,
    /// Graph inputs that are not initializers (the model's real inputs).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// Nodes in file (topological) order, without the folded `Constant` nodes.
    pub nodes: Vec<Node>,
}

impl Model {
    /// The initializer or constant called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.initializers
            .iter()
            .chain(&self.constants)
            .find(|t| t.name == name)
    }
}

/// Read and decode the ONNX file at `path`.
///
/// Tensors stored as external data (`data_location = EXTERNAL`, as `torch.onnx.export`
/// writes them to `model.onnx.data`) are read from files in the model's folder.
pub fn load(path: &Path) -> Result<Model, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    decode_with_base(&bytes, Some(&base))
}

/// Decode the bytes of an ONNX file (a serialized `ModelProto`). A tensor stored as
/// external data is an error ([`OnnxError::ExternalData`]); use [`decode_with_base`] to
/// read it from a folder.
pub fn decode(bytes: &[u8]) -> Result<Model, OnnxError> {
    decode_with_base(bytes, None)
}

/// [`decode_with_base`] of a file's bytes, taken over: the tensors' `raw_data` are then views
/// into them (megabytes of weights are not copied once more).
pub fn decode_owned(bytes: Vec<u8>, base: Option<&Path>) -> Result<Model, OnnxError> {
    decode_buf(bytes::Bytes::from(bytes), base)
}

/// Decode the bytes of an ONNX file whose external data (if any) live in the folder
/// `base`, the folder of the model file. Each external tensor's `location` must be a
/// relative path without `..` that resolves, after following symbolic links, inside
/// `base`; `offset` (default 0) and `length` (default: the rest of the file) select its
/// bytes, which must be exactly the little-endian values its dims require. With
/// `base = None` external data is an error.
pub fn decode_with_base(bytes: &[u8], base: Option<&Path>) -> Result<Model, OnnxError> {
    decode_buf(bytes::Bytes::copy_from_slice(bytes), base)
}

fn decode_buf(bytes: bytes::Bytes, base: Option<&Path>) -> Result<Model, OnnxError> {
    let ext = External::new(base);
    let model = proto::ModelProto::decode(bytes).map_err(OnnxError::Decode)?;
    let ir_version = model.ir_version.unwrap_or(0);
    let opset_version = model
        .opset_import
        .iter()
        .filter(|o| is_default_domain(o.domain.as_deref().unwrap_or("")))
        .filter_map(|o| o.version)
        .max();
    let graph = model.graph.ok_or(OnnxError::MissingGraph)?;

    let initializers = graph
        .initializer
        .iter()
        .map(|t| convert_tensor(t, t.name.clone().unwrap_or_default(), &ext))
        .collect::<Result<Vec<_>, _>>()?;
    let init_names: HashSet<&str> = initializers.iter().map(|t| t.name.as_str()).collect();

    let inputs = graph
        .input
        .iter()
        .map(convert_value_info)
        .filter(|v| !init_names.contains(v.name.as_str()))
        .collect();
    let outputs = graph.output.iter().map(convert_value_info).collect();

    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut constants = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        let node = convert_node(n, index, &ext)?;
        match fold_constant(&node) {
            Some(tensor) => constants.push(tensor?),
            None => nodes.push(node),
        }
    }

    Ok(Model {
        graph_name: graph.name.unwrap_or_default(),
        ir_version,
        opset_version,
        initializers,
        constants,
        inputs,
        outputs,
        nodes,
    })
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

fn convert_value_info(v: &proto::ValueInfoProto) -> ValueInfo {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    use proto::type_proto::Value as Ty;
    let shape = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Ty::TensorType(t)) => t.shape.as_ref(),
        Some(Ty::SparseTensorType(t)) => t.shape.as_ref(),
        None => None,
    };
    let dims = shape
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(n)) => usize::try_from(n).ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        dims,
    }
}

fn convert_node(n: &proto::NodeProto, index: usize, ext: &External) -> Result<Node, OnnxError> {
    let mut node = Node {
        name: n.name.clone().unwrap_or_default(),
        op_type: n.op_type.clone().unwrap_or_default(),
        domain: n.domain.clone().unwrap_or_default(),
        inputs: n.input.clone(),
        outputs: n.output.clone(),
        attributes: Vec::with_capacity(n.attribute.len()),
        index,
    };
    for a in &n.attribute {
        let name = a.name.clone().unwrap_or_default();
        let value = convert_attr_value(a, &node, &name, ext)?;
        node.attributes.push(Attribute { name, value });
    }
    Ok(node)
}

fn convert_attr_value(
    a: &proto::AttributeProto,
    node: &Node,
    attr_name: &str,
    ext: &External,
) -> Result<AttrValue, OnnxError> {
    // IR version 1 files have no `type`; infer it from the field that is set.
    let ty = match a.r#type.and_then(|t| AttributeType::try_from(t).ok()) {
        Some(t) if t != AttributeType::Undefined => t,
        _ if a.f.is_some() => AttributeType::Float,
        _ if a.i.is_some() => AttributeType::Int,
        _ if a.s.is_some() => AttributeType::String,
        _ if a.t.is_some() => AttributeType::Tensor,
        _ if !a.floats.is_empty() => AttributeType::Floats,
        _ if !a.ints.is_empty() => AttributeType::Ints,
        _ => AttributeType::Undefined,
    };
    Ok(match ty {
        AttributeType::Float => AttrValue::Float(f64::from(a.f.unwrap_or_default())),
        AttributeType::Int => AttrValue::Int(a.i.unwrap_or_default()),
        AttributeType::String => {
            AttrValue::String(String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into())
        }
        AttributeType::Floats => {
            AttrValue::Floats(a.floats.iter().map(|&v| f64::from(v)).collect())
        }
        AttributeType::Ints => AttrValue::Ints(a.ints.clone()),
        AttributeType::Tensor => match &a.t {
            Some(t) => {
                // Unnamed attribute tensors are named after what refers to them: a
                // Constant's output, or "<node>.<attribute>".
                let name = match (t.name.as_deref(), node.outputs.as_slice()) {
                    (Some(n), _) if !n.is_empty() => n.to_string(),
                    (_, [out]) if node.op_type == "Constant" => out.clone(),
                    _ => format!("{}.{}", node.display_name(), attr_name),
                };
                AttrValue::Tensor(convert_tensor(t, name, ext)?)
            }
            None => AttrValue::Other,
        },
        _ => AttrValue::Other,
    })
}

/// `Some(tensor)` if `node` is a `Constant` whose value can be represented as a [`Tensor`];
/// `None` leaves the node in the graph (e.g. `sparse_value`, strings).
fn fold_constant(node: &Node) -> Option<Result<Tensor, OnnxError>> {
    if node.op_type != "Constant" || !is_default_domain(&node.domain) || node.outputs.len() != 1 {
        return None;
    }
    let [attr] = node.attributes.as_slice() else {
        return None;
    };
    let name = node.outputs[0].clone();
    let (dims, data, elem_type) = match (attr.name.as_str(), &attr.value) {
        ("value", AttrValue::Tensor(t)) => (t.dims.clone(), t.data.clone(), t.elem_type),
        ("value_float", AttrValue::Float(v)) => (vec![], vec![*v], ElemType::Float),
        ("value_floats", AttrValue::Floats(v)) => (vec![v.len()], v.clone(), ElemType::Float),
        ("value_int", AttrValue::Int(v)) => (vec![], vec![*v as f64], ElemType::Int64),
        ("value_ints", AttrValue::Ints(v)) => (
            vec![v.len()],
            v.iter().map(|&x| x as f64).collect(),
            ElemType::Int64,
        ),
        _ => return None,
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Some(Err(OnnxError::NonFinite { tensor: name }));
    }
    Some(Ok(Tensor {
        name,
        dims,
        data,
        elem_type,
    }))
}

/// Where external tensor data may be read from: the canonical model folder, if known, and
/// the external files read so far (a model usually keeps all tensors in one file).
struct External {
    base: Option<PathBuf>,
    files: std::cell::RefCell<std::collections::HashMap<PathBuf, std::rc::Rc<Vec<u8>>>>,
}

impl External {
    fn new(base: Option<&Path>) -> Self {
        External {
            base: base.map(Path::to_path_buf),
            files: Default::default(),
        }
    }

    /// The bytes of the external tensor `name` described by `entries`.
    fn read(
        &self,
        name: &str,
        entries: &[proto::StringStringEntryProto],
    ) -> Result<Vec<u8>, OnnxError> {
        let bad = |msg: String| OnnxError::ExternalDataInvalid {
            tensor: name.to_string(),
            msg,
        };
        let Some(base) = &self.base else {
            return Err(OnnxError::ExternalData {
                tensor: name.to_string(),
            });
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|e| e.key.as_deref() == Some(key))
                .and_then(|e| e.value.as_deref())
        };
        let location = get("location").ok_or_else(|| bad("has no 'location'".into()))?;
        let number = |key: &str| -> Result<Option<usize>, OnnxError> {
            match get(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| bad(format!("'{key}' = '{v}' is not a non-negative integer"))),
            }
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let rel = Path::new(location);
        if location.is_empty()
            || rel.is_absolute()
            || rel.has_root()
            || rel.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(bad(format!(
                "location '{location}' must be a relative path inside the model's folder \
                 (no '..', not absolute)"
            )));
        }
        let canon_base = base.canonicalize().map_err(|e| {
            bad(format!(
                "folder '{}' cannot be resolved: {e}",
                base.display()
            ))
        })?;
        let file = canon_base
            .join(rel)
            .canonicalize()
            .map_err(|e| bad(format!("file '{location}' cannot be read: {e}")))?;
        if !file.starts_with(&canon_base) {
            return Err(bad(format!(
                "location '{location}' resolves outside the model's folder"
            )));
        }
        let bytes = {
            let mut files = self.files.borrow_mut();
            match files.get(&file) {
                Some(b) => b.clone(),
                None => {
                    let b = std::rc::Rc::new(
                        std::fs::read(&file)
                            .map_err(|e| bad(format!("file '{location}' cannot be read: {e}")))?,
                    );
                    files.insert(file.clone(), b.clone());
                    b
                }
            }
        };
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(bytes.len().max(offset)),
        };
        match end {
            Some(end) if end <= bytes.len() => Ok(bytes[offset..end].to_vec()),
            _ => Err(bad(format!(
                "file '{location}' has {} bytes, too short for offset {offset} and length {}",
                bytes.len(),
                length.map_or("(rest)".to_string(), |l| l.to_string())
            ))),
        }
    }
}

fn convert_tensor(
    t: &proto::TensorProto,
    name: String,
    ext: &External,
) -> Result<Tensor, OnnxError> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        let external_raw = proto::TensorProto {
            raw_data: Some(ext.read(&name, &t.external_data)?.into()),
            external_data: vec![],
            data_location: None,
            ..t.clone()
        };
        return convert_tensor_data(&external_raw, name, true);
    }
    convert_tensor_data(t, name, false)
}

fn convert_tensor_data(
    t: &proto::TensorProto,
    name: String,
    external: bool,
) -> Result<Tensor, OnnxError> {
    let data_type = t.data_type.unwrap_or(0);
    let elem_type = match DataType::try_from(data_type) {
        Ok(DataType::Float) => ElemType::Float,
        Ok(DataType::Double) => ElemType::Double,
        Ok(DataType::Int32) => ElemType::Int32,
        Ok(DataType::Int64) => ElemType::Int64,
        other => {
            return Err(OnnxError::UnsupportedDataType {
                tensor: name,
                data_type,
                type_name: other.map_or("unknown", DataType::proto_name),
            })
        }
    };

    let invalid_dims = |name: String| OnnxError::InvalidDims {
        tensor: name,
        dims: t.dims.clone(),
    };
    let dims = match t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
    {
        Ok(d) => d,
        Err(_) => return Err(invalid_dims(name)),
    };
    // Element count, checked so that even its byte size (at most 8 per element) fits.
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|c| c.checked_mul(8).is_some());
    let Some(count) = count else {
        return Err(invalid_dims(name));
    };

    let typed_len = match elem_type {
        ElemType::Float => t.float_data.len(),
        ElemType::Double => t.double_data.len(),
        ElemType::Int32 => t.int32_data.len(),
        ElemType::Int64 => t.int64_data.len(),
    };
    let data: Vec<f64> = match &t.raw_data {
        // raw_data takes precedence; an explicitly empty raw_data next to typed values is
        // treated as absent.
        Some(raw) if !raw.is_empty() || typed_len == 0 => {
            let width = elem_type.byte_width();
            let expected = count * width;
            if raw.len() != expected && external {
                return Err(OnnxError::ExternalDataInvalid {
                    tensor: name,
                    msg: format!(
                        "has {} bytes but dims {dims:?} of {} need {expected}",
                        raw.len(),
                        elem_type.proto_name()
                    ),
                });
            }
            if raw.len() != expected {
                return Err(OnnxError::RawDataLength {
                    tensor: name,
                    dims,
                    type_name: elem_type.proto_name(),
                    expected,
                    actual: raw.len(),
                });
            }
            let chunks = raw.chunks_exact(width);
            match elem_type {
                ElemType::Float => chunks
                    .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                ElemType::Int32 => chunks
                    .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                ElemType::Double => chunks
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
                ElemType::Int64 => chunks
                    .map(|c| {
                        i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
                    })
                    .collect(),
            }
        }
        _ => {
            if typed_len != count {
                let field = match elem_type {
                    ElemType::Float => "float_data",
                    ElemType::Double => "double_data",
                    ElemType::Int32 => "int32_data",
                    ElemType::Int64 => "int64_data",
                };
                return Err(OnnxError::DataLength {
                    tensor: name,
                    field,
                    dims,
                    expected: count,
                    actual: typed_len,
                });
            }
            match elem_type {
                ElemType::Float => t.float_data.iter().map(|&v| f64::from(v)).collect(),
                ElemType::Double => t.double_data.clone(),
                ElemType::Int32 => t.int32_data.iter().map(|&v| f64::from(v)).collect(),
                ElemType::Int64 => t.int64_data.iter().map(|&v| v as f64).collect(),
            }
        }
    };

    if data.iter().any(|v| !v.is_finite()) {
        return Err(OnnxError::NonFinite { tensor: name });
    }
    Ok(Tensor {
        name,
        dims,
        data,
        elem_type,
    })
}

#[cfg(test)]
mod tests {
    use super::proto::{
        AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
    };
    use super::*;

    const FIXTURES: &[&str] = &[
        "e12_one_neuron.onnx",
        "mlp_small.onnx",
        "mlp_matmul.onnx",
        "ops_zoo.onnx",
        "maxpool.onnx",
        "e14_maxpool.onnx",
        "float_data.onnx",
        "external.onnx",
        "unsupported_op.onnx",
        "gemm_alpha.onnx",
    ];

    fn fixture_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/onnx")
            .join(name)
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture_path(name)).unwrap()
    }

    fn fixture(name: &str) -> Model {
        load(&fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn op_types(m: &Model) -> Vec<&str> {
        m.nodes.iter().map(|n| n.op_type.as_str()).collect()
    }

    /// (name, dims) of each tensor, in order.
    fn shapes(ts: &[Tensor]) -> Vec<(&str, Vec<usize>)> {
        ts.iter()
            .map(|t| (t.name.as_str(), t.dims.clone()))
            .collect()
    }

    fn vi(name: &str, dims: &[Option<usize>]) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dims: dims.to_vec(),
        }
    }

    fn node<'a>(m: &'a Model, name: &str) -> &'a Node {
        m.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn err_msg(r: Result<Model, OnnxError>) -> String {
        let msg = r.expect_err("expected an error").to_string();
        assert!(!msg.contains('\n'), "multi-line message: {msg}");
        msg
    }

    // ---------- fixtures ----------

    #[test]
    fn e12_one_neuron() {
        let m = decode(include_bytes!("../../fixtures/onnx/e12_one_neuron.onnx")).unwrap();
        assert_eq!(m.graph_name, "e12_one_neuron");
        assert_eq!(m.ir_version, 8);
        assert_eq!(m.opset_version, Some(13));
        assert_eq!(op_types(&m), ["Gemm", "Relu", "Gemm"]);
        let names: Vec<String> = m.nodes.iter().map(Node::display_name).collect();
        assert_eq!(names, ["Gemm #0", "Relu #1", "Gemm #2"]);
        assert_eq!(m.nodes[0].inputs, ["x", "W1", "b1"]);
        assert_eq!(m.nodes[0].outputs, ["h"]);
        assert_eq!(m.nodes[2].attr_i("transB"), Some(1));
        assert_eq!(m.nodes[2].attr_f("transB"), None);
        assert_eq!(
            shapes(&m.initializers),
            [
                ("W1", vec![1, 1]),
                ("b1", vec![1]),
                ("W2", vec![1, 1]),
                ("b2", vec![1])
            ]
        );
        let data: Vec<&[f64]> = m.initializers.iter().map(|t| &t.data[..]).collect();
        assert_eq!(data, [&[1.0][..], &[0.0], &[1.0], &[0.0]]);
        assert!(m
            .initializers
            .iter()
            .all(|t| t.elem_type == ElemType::Float));
        assert!(m.constants.is_empty());
        assert_eq!(m.inputs, [vi("x", &[None, Some(1)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(1)])]);
    }

    const MLP_W1: [f64; 6] = [1.0, -1.0, 0.5, 2.0, -1.5, 0.25];
    const MLP_B1: [f64; 3] = [0.0, 0.5, -0.25];
    const MLP_W2: [f64; 3] = [1.0, -2.0, 0.5];
    const MLP_B2: [f64; 1] = [0.125];

    #[test]
    fn mlp_small() {
        let m = fixture("mlp_small.onnx");
        assert_eq!(op_types(&m), ["Gemm", "Relu", "Gemm"]);
        let names: Vec<String> = m.nodes.iter().map(Node::display_name).collect();
        assert_eq!(names, ["fc1", "relu1", "fc2"]);
        assert_eq!(
            shapes(&m.initializers),
            [
                ("W1", vec![3, 2]),
                ("b1", vec![3]),
                ("W2", vec![1, 3]),
                ("b2", vec![1])
            ]
        );
        assert_eq!(m.initializers[0].data, MLP_W1);
        assert_eq!(m.initializers[1].data, MLP_B1);
        assert_eq!(m.initializers[2].data, MLP_W2);
        assert_eq!(m.initializers[3].data, MLP_B2);
        assert_eq!(node(&m, "fc1").attr_i("transB"), Some(1));
        assert_eq!(m.inputs, [vi("x", &[None, Some(2)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(1)])]);
    }

    #[test]
    fn mlp_matmul() {
        let m = fixture("mlp_matmul.onnx");
        assert_eq!(op_types(&m), ["MatMul", "Add", "Relu", "MatMul", "Add"]);
        assert_eq!(m.nodes[0].inputs, ["x", "W1t"]);
        assert_eq!(m.nodes[1].inputs, ["m1", "b1"]);
        assert_eq!(
            shapes(&m.initializers),
            [
                ("W1t", vec![2, 3]),
                ("b1", vec![3]),
                ("W2t", vec![3, 1]),
                ("b2", vec![1])
            ]
        );
        // W1t is the transpose of mlp_small's 3x2 W1.
        let w1t = &m.initializers[0].data;
        for i in 0..2 {
            for j in 0..3 {
                assert_eq!(w1t[i * 3 + j], MLP_W1[j * 2 + i]);
            }
        }
        assert_eq!(m.initializers[2].data, MLP_W2);
        assert_eq!(m.inputs, [vi("x", &[None, Some(2)])]);
    }

    #[test]
    fn ops_zoo() {
        let m = fixture("ops_zoo.onnx");
        assert_eq!(
            op_types(&m),
            [
                "LeakyRelu",
                "Abs",
                "Neg",
                "Sub",
                "Mul",
                "Max",
                "Min",
                "Clip",
                "HardSigmoid",
                "Tanh",
                "Sigmoid",
                "Identity",
                "Reshape",
                "Flatten",
                "Reshape"
            ]
        );
        // Indices count the folded Constant nodes (file positions 0 and 13).
        let idx: Vec<usize> = m.nodes.iter().map(|n| n.index).collect();
        assert_eq!(idx, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16]);
        assert_eq!(node(&m, "leaky").attr_f("alpha"), Some(f64::from(0.1f32)));
        let hs = node(&m, "hardsigmoid");
        assert_eq!(hs.attr_f("alpha"), Some(f64::from(0.2f32)));
        assert_eq!(hs.attr_f("beta"), Some(0.5));
        assert_eq!(node(&m, "flatten").attr_i("axis"), Some(1));
        assert_eq!(node(&m, "clip").inputs, ["g", "clip_min", "clip_max"]);
        assert_eq!(node(&m, "mul").inputs, ["d", "two"]);
        assert_eq!(node(&m, "reshape3").inputs, ["l", "shape3"]);

        assert_eq!(
            shapes(&m.initializers),
            [
                ("max_floor", vec![4]),
                ("min_ceil", vec![4]),
                ("clip_min", vec![]),
                ("clip_max", vec![]),
                ("shape2", vec![2])
            ]
        );
        assert_eq!(m.initializers[0].data, [-1.0, 0.0, 0.5, -0.25]);
        assert_eq!(m.initializers[1].data, [2.0, 1.5, 3.0, 0.75]);
        assert_eq!(m.initializers[2].data, [-0.5]);
        assert_eq!(m.initializers[3].data, [1.25]);
        // The int64 shape initializer is decoded but marked as integer: not a parameter.
        let shape2 = m.tensor("shape2").unwrap();
        assert_eq!(shape2.data, [-1.0, 4.0]);
        assert_eq!(shape2.elem_type, ElemType::Int64);
        assert!(shape2.elem_type.is_integer());
        let params: Vec<&str> = m
            .initializers
            .iter()
            .filter(|t| !t.elem_type.is_integer())
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(params, ["max_floor", "min_ceil", "clip_min", "clip_max"]);

        assert_eq!(
            m.constants,
            [
                Tensor {
                    name: "two".into(),
                    dims: vec![],
                    data: vec![2.0],
                    elem_type: ElemType::Float
                },
                Tensor {
                    name: "shape3".into(),
                    dims: vec![3],
                    data: vec![-1.0, 2.0, 2.0],
                    elem_type: ElemType::Int64
                }
            ]
        );
        assert_eq!(m.inputs, [vi("x", &[None, Some(4)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(4)])]);
    }

    #[test]
    fn maxpool() {
        let m = fixture("maxpool.onnx");
        assert_eq!(op_types(&m), ["MaxPool", "Flatten", "Gemm"]);
        let pool = node(&m, "pool");
        assert_eq!(pool.attr_ints("kernel_shape"), Some(&[2][..]));
        assert_eq!(pool.attr_ints("strides"), Some(&[2][..]));
        assert_eq!(pool.attr_ints("pads"), None);
        assert_eq!(shapes(&m.initializers), [("W", vec![1, 2]), ("b", vec![1])]);
        assert_eq!(m.initializers[0].data, [0.5, -1.0]);
        assert_eq!(m.initializers[1].data, [0.25]);
        assert_eq!(m.inputs, [vi("x", &[None, Some(1), Some(4)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(1)])]);
    }

    #[test]
    fn e14_maxpool() {
        let m = fixture("e14_maxpool.onnx");
        assert_eq!(
            op_types(&m),
            ["Gemm", "Reshape", "MaxPool", "Flatten", "Gemm"]
        );
        assert_eq!(
            shapes(&m.initializers),
            [
                ("W1", vec![4, 2]),
                ("b1", vec![4]),
                ("W2", vec![1, 2]),
                ("b2", vec![1])
            ]
        );
        assert_eq!(
            m.initializers[0].data,
            [1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0]
        );
        assert_eq!(m.initializers[1].data, [0.0; 4]);
        assert_eq!(m.initializers[2].data, [1.0, -1.0]);
        assert_eq!(m.initializers[3].data, [0.0]);
        assert_eq!(shapes(&m.constants), [("shape", vec![3])]);
        assert_eq!(m.constants[0].data, [-1.0, 1.0, 4.0]);
        assert_eq!(node(&m, "reshape").inputs, ["h", "shape"]);
        assert_eq!(node(&m, "pool").attr_ints("kernel_shape"), Some(&[2][..]));
        assert_eq!(m.inputs, [vi("x", &[None, Some(2)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(1)])]);
    }

    #[test]
    fn float_data() {
        // The file really stores float_data, and lists its initializers as inputs.
        let bytes = fixture_bytes("float_data.onnx");
        let raw = ModelProto::decode(&bytes[..]).unwrap();
        let g = raw.graph.as_ref().unwrap();
        assert!(g.initializer.iter().all(|t| t.raw_data.is_none()));
        assert_eq!(g.initializer[0].float_data.len(), 4);
        assert_eq!(g.input.len(), 3);

        let m = decode(&bytes).unwrap();
        assert_eq!(op_types(&m), ["Gemm", "Relu"]);
        assert_eq!(shapes(&m.initializers), [("W", vec![2, 2]), ("b", vec![2])]);
        assert_eq!(m.initializers[0].data, [1.0, -0.5, 0.25, 2.0]);
        assert_eq!(m.initializers[1].data, [0.0, -1.0]);
        assert_eq!(m.inputs, [vi("x", &[None, Some(2)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(2)])]);
    }

    #[test]
    fn external_is_rejected() {
        let e = decode(include_bytes!("../../fixtures/onnx/external.onnx")).unwrap_err();
        assert!(matches!(&e, OnnxError::ExternalData { tensor } if tensor == "W"));
        assert_eq!(
            e.to_string(),
            "tensor 'W' uses external data, which needs the model's folder (load the model from a file, or give a base folder)"
        );
    }

    #[test]
    fn unsupported_op_still_decodes() {
        let m = fixture("unsupported_op.onnx");
        assert_eq!(op_types(&m), ["Floor", "Relu"]);
        assert_eq!(m.nodes[0].display_name(), "floor1");
        assert!(m.initializers.is_empty());
        assert_eq!(m.inputs, [vi("x", &[None, Some(4)])]);
        assert_eq!(m.outputs, [vi("y", &[None, Some(4)])]);
    }

    #[test]
    fn gemm_alpha() {
        let m = fixture("gemm_alpha.onnx");
        assert_eq!(op_types(&m), ["Gemm"]);
        let g = &m.nodes[0];
        assert_eq!(g.attr_f("alpha"), Some(0.5));
        assert_eq!(g.attr_f("beta"), Some(2.0));
        assert_eq!(g.attr_i("transA"), Some(0));
        assert_eq!(g.attr_i("transB"), Some(1));
        assert_eq!(g.attr_i("alpha"), None);
        assert_eq!(g.attr_f("gamma"), None);
        let attrs: Vec<&str> = g.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(attrs, ["alpha", "beta", "transA", "transB"]);
        assert_eq!(shapes(&m.initializers), [("W", vec![1, 2]), ("b", vec![1])]);
        assert_eq!(m.initializers[0].data, [2.0, -4.0]);
        assert_eq!(m.initializers[1].data, [0.5]);
    }

    #[test]
    fn load_missing_file() {
        let msg = err_msg(load(Path::new("/nonexistent/dir/m.onnx")));
        assert!(
            msg.starts_with("cannot read '/nonexistent/dir/m.onnx': "),
            "{msg}"
        );
    }

    // ---------- hand-built protos for the error paths ----------

    fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(
                vals.iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        }
    }

    fn model_with(initializer: Vec<TensorProto>, node: Vec<NodeProto>) -> Vec<u8> {
        ModelProto {
            ir_version: Some(8),
            graph: Some(GraphProto {
                name: Some("g".into()),
                initializer,
                node,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn with_tensor(t: TensorProto) -> Result<Model, OnnxError> {
        decode(&model_with(vec![t], vec![]))
    }

    #[test]
    fn missing_graph() {
        assert_eq!(err_msg(decode(&[])), "not an ONNX model: it has no graph");
        let no_graph = ModelProto {
            ir_version: Some(8),
            ..Default::default()
        };
        let msg = err_msg(decode(&no_graph.encode_to_vec()));
        assert_eq!(msg, "not an ONNX model: it has no graph");
    }

    #[test]
    fn undecodable() {
        let msg = err_msg(decode(b"\xff\xff\xff"));
        assert!(msg.starts_with("not an ONNX model: "), "{msg}");
        let text = err_msg(decode(b"this is not an onnx file"));
        assert!(text.starts_with("not an ONNX model: "), "{text}");
    }

    #[test]
    fn unsupported_data_type() {
        let t = TensorProto {
            data_type: Some(DataType::Float16 as i32),
            ..f32_tensor("W", &[1], &[0.0])
        };
        assert_eq!(
            err_msg(with_tensor(t)),
            "tensor 'W' has unsupported data type 10 (FLOAT16); \
             only FLOAT, DOUBLE, INT32 and INT64 are supported"
        );
        let t = TensorProto {
            data_type: Some(99),
            ..f32_tensor("W", &[1], &[0.0])
        };
        assert!(err_msg(with_tensor(t)).contains("data type 99 (unknown)"));
        let t = TensorProto {
            data_type: None,
            ..f32_tensor("W", &[1], &[0.0])
        };
        assert!(err_msg(with_tensor(t)).contains("data type 0 (UNDEFINED)"));
    }

    #[test]
    fn raw_data_length_mismatch() {
        let mut t = f32_tensor("W", &[3, 2], &[1.0; 6]);
        let raw = t.raw_data.take().unwrap();
        t.raw_data = Some(raw.slice(..raw.len() - 1));
        assert_eq!(
            err_msg(with_tensor(t)),
            "tensor 'W': raw_data has 23 bytes but dims [3, 2] of FLOAT need 24"
        );
    }

    #[test]
    fn float_data_length_mismatch() {
        let t = TensorProto {
            raw_data: None,
            float_data: vec![1.0; 5],
            ..f32_tensor("W", &[3, 2], &[])
        };
        assert_eq!(
            err_msg(with_tensor(t)),
            "tensor 'W': float_data has 5 values but dims [3, 2] need 6"
        );
        // No data at all.
        let t = TensorProto {
            raw_data: None,
            ..f32_tensor("W", &[2], &[])
        };
        assert_eq!(
            err_msg(with_tensor(t)),
            "tensor 'W': float_data has 0 values but dims [2] need 2"
        );
    }

    #[test]
    fn non_finite_values() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let msg = err_msg(with_tensor(f32_tensor("W", &[2], &[1.0, bad])));
            assert_eq!(msg, "tensor 'W' contains NaN or Inf");
            let t = TensorProto {
                raw_data: None,
                float_data: vec![bad],
                ..f32_tensor("W", &[1], &[])
            };
            assert_eq!(err_msg(with_tensor(t)), "tensor 'W' contains NaN or Inf");
        }
        let t = TensorProto {
            data_type: Some(DataType::Double as i32),
            raw_data: None,
            double_data: vec![f64::NAN],
            ..f32_tensor("D", &[1], &[])
        };
        assert_eq!(err_msg(with_tensor(t)), "tensor 'D' contains NaN or Inf");
    }

    #[test]
    fn external_data_entries_without_location_flag() {
        let t = TensorProto {
            raw_data: None,
            external_data: vec![StringStringEntryProto {
                key: Some("location".into()),
                value: Some("w.bin".into()),
            }],
            ..f32_tensor("W", &[2], &[])
        };
        assert_eq!(
            err_msg(with_tensor(t)),
            "tensor 'W' uses external data, which needs the model's folder (load the model from a file, or give a base folder)"
        );
    }

    #[test]
    fn invalid_dims() {
        let msg = err_msg(with_tensor(f32_tensor("W", &[-1, 2], &[])));
        assert_eq!(msg, "tensor 'W' has invalid dims [-1, 2]");
        let huge = f32_tensor("W", &[1 << 40, 1 << 40], &[]);
        assert!(err_msg(with_tensor(huge)).contains("invalid dims"));
    }

    #[test]
    fn other_element_types() {
        let m = decode(&model_with(
            vec![
                TensorProto {
                    data_type: Some(DataType::Double as i32),
                    raw_data: None,
                    double_data: vec![0.1, -2.0],
                    ..f32_tensor("d", &[2], &[])
                },
                TensorProto {
                    data_type: Some(DataType::Double as i32),
                    raw_data: Some(
                        [0.1f64, 3.0]
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect::<Vec<u8>>()
                            .into(),
                    ),
                    ..f32_tensor("d_raw", &[2, 1], &[])
                },
                TensorProto {
                    data_type: Some(DataType::Int32 as i32),
                    raw_data: None,
                    int32_data: vec![-7, 3],
                    ..f32_tensor("i32", &[2], &[])
                },
                TensorProto {
                    data_type: Some(DataType::Int32 as i32),
                    raw_data: Some((-5i32).to_le_bytes().to_vec().into()),
                    ..f32_tensor("i32_raw", &[], &[])
                },
                TensorProto {
                    data_type: Some(DataType::Int64 as i32),
                    raw_data: None,
                    int64_data: vec![-1, 1 << 40],
                    ..f32_tensor("i64", &[2], &[])
                },
                // Zero-sized tensor: no data needed.
                TensorProto {
                    raw_data: None,
                    ..f32_tensor("empty", &[0, 3], &[])
                },
            ],
            vec![],
        ))
        .unwrap();
        let got: Vec<(&str, &[f64], ElemType)> = m
            .initializers
            .iter()
            .map(|t| (t.name.as_str(), &t.data[..], t.elem_type))
            .collect();
        assert_eq!(
            got,
            [
                ("d", &[0.1, -2.0][..], ElemType::Double),
                ("d_raw", &[0.1, 3.0][..], ElemType::Double),
                ("i32", &[-7.0, 3.0][..], ElemType::Int32),
                ("i32_raw", &[-5.0][..], ElemType::Int32),
                ("i64", &[-1.0, (1u64 << 40) as f64][..], ElemType::Int64),
                ("empty", &[][..], ElemType::Float),
            ]
        );
        assert_eq!(m.initializers[5].dims, [0, 3]);
    }

    fn attr(name: &str) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn constant(out: &str, a: AttributeProto) -> NodeProto {
        NodeProto {
            output: vec![out.into()],
            op_type: Some("Constant".into()),
            attribute: vec![a],
            ..Default::default()
        }
    }

    #[test]
    fn constant_variants() {
        let nodes = vec![
            constant(
                "fs",
                AttributeProto {
                    r#type: Some(AttributeType::Floats as i32),
                    floats: vec![1.5, -2.0],
                    ..attr("value_floats")
                },
            ),
            constant(
                "i",
                AttributeProto {
                    r#type: Some(AttributeType::Int as i32),
                    i: Some(-3),
                    ..attr("value_int")
                },
            ),
            constant(
                "is",
                AttributeProto {
                    r#type: Some(AttributeType::Ints as i32),
                    ints: vec![4, 5],
                    ..attr("value_ints")
                },
            ),
            // Unnamed value tensor: takes the output's name.
            constant(
                "t",
                AttributeProto {
                    r#type: Some(AttributeType::Tensor as i32),
                    t: Some(TensorProto {
                        name: None,
                        ..f32_tensor("", &[1, 2], &[0.5, 0.25])
                    }),
                    ..attr("value")
                },
            ),
            // Not representable: stays a node.
            constant(
                "s",
                AttributeProto {
                    r#type: Some(AttributeType::String as i32),
                    s: Some(b"hi".to_vec()),
                    ..attr("value_string")
                },
            ),
        ];
        let m = decode(&model_with(vec![], nodes)).unwrap();
        assert_eq!(
            shapes(&m.constants),
            [
                ("fs", vec![2]),
                ("i", vec![]),
                ("is", vec![2]),
                ("t", vec![1, 2])
            ]
        );
        assert_eq!(m.constants[0].data, [1.5, -2.0]);
        assert_eq!(m.constants[1].data, [-3.0]);
        assert_eq!(m.constants[1].elem_type, ElemType::Int64);
        assert_eq!(m.constants[2].data, [4.0, 5.0]);
        assert_eq!(m.constants[3].data, [0.5, 0.25]);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].display_name(), "Constant #4");
        assert_eq!(m.nodes[0].attr_s("value_string"), Some("hi"));
        assert!(m.initializers.is_empty());
    }

    #[test]
    fn constant_errors_name_the_output() {
        let nan = constant(
            "c",
            AttributeProto {
                r#type: Some(AttributeType::Float as i32),
                f: Some(f32::NAN),
                ..attr("value_float")
            },
        );
        let msg = err_msg(decode(&model_with(vec![], vec![nan])));
        assert_eq!(msg, "tensor 'c' contains NaN or Inf");
        let ext = constant(
            "c2",
            AttributeProto {
                r#type: Some(AttributeType::Tensor as i32),
                t: Some(TensorProto {
                    name: None,
                    data_location: Some(DataLocation::External as i32),
                    ..f32_tensor("", &[1], &[])
                }),
                ..attr("value")
            },
        );
        let msg = err_msg(decode(&model_with(vec![], vec![ext])));
        assert_eq!(
            msg,
            "tensor 'c2' uses external data, which needs the model's folder (load the model from a file, or give a base folder)"
        );
    }

    #[test]
    fn untyped_attributes_and_other_kinds() {
        // IR version 1 attributes carry no `type`: inferred from the field that is set.
        let n = NodeProto {
            op_type: Some("Foo".into()),
            name: Some("foo".into()),
            attribute: vec![
                AttributeProto {
                    f: Some(0.25),
                    ..attr("f")
                },
                AttributeProto {
                    i: Some(7),
                    ..attr("i")
                },
                AttributeProto {
                    floats: vec![1.0, 2.0],
                    ..attr("fs")
                },
                AttributeProto {
                    r#type: Some(AttributeType::Strings as i32),
                    strings: vec![b"a".to_vec()],
                    ..attr("ss")
                },
                AttributeProto {
                    r#type: Some(AttributeType::Tensor as i32),
                    t: Some(TensorProto {
                        name: None,
                        ..f32_tensor("", &[1], &[3.0])
                    }),
                    ..attr("value")
                },
            ],
            ..Default::default()
        };
        let m = decode(&model_with(vec![], vec![n])).unwrap();
        let n = &m.nodes[0];
        assert_eq!(n.attr_f("f"), Some(0.25));
        assert_eq!(n.attr_i("i"), Some(7));
        assert_eq!(n.attr_floats("fs"), Some(&[1.0, 2.0][..]));
        assert_eq!(n.attr("ss"), Some(&AttrValue::Other));
        match n.attr("value") {
            Some(AttrValue::Tensor(t)) => {
                assert_eq!(t.name, "foo.value");
                assert_eq!(t.data, [3.0]);
            }
            other => panic!("{other:?}"),
        }
    }

    // ---------- robustness: never panic ----------

    /// xorshift64*, deterministic.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_error() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let len = (rng.next() % 512) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let msg = err_msg(decode(&bytes));
            assert!(msg.starts_with("not an ONNX model: "), "{msg}");
        }
    }

    #[test]
    fn truncated_files_error() {
        for name in FIXTURES {
            let bytes = fixture_bytes(name);
            let full = decode(&bytes);
            for cut in 0..bytes.len() {
                // The graph is one length-delimited field, so any cut inside it fails; a cut
                // after it (in the trailing opset_import) may decode, with the same graph.
                match (decode(&bytes[..cut]), &full) {
                    (Err(e), _) => assert!(!e.to_string().contains('\n')),
                    (Ok(m), Ok(f)) => {
                        assert_eq!(m.nodes, f.nodes, "{name} cut at {cut}");
                        assert_eq!(m.initializers, f.initializers, "{name} cut at {cut}");
                    }
                    (Ok(_), Err(e)) => panic!("{name} cut at {cut} decoded, full file: {e}"),
                }
            }
        }
    }

    #[test]
    fn mutated_files_do_not_panic() {
        let mut rng = Rng(42);
        for name in FIXTURES {
            let bytes = fixture_bytes(name);
            // Every byte replaced by a few values, one at a time...
            for i in 0..bytes.len() {
                for v in [0x00, 0xff, 0x80, bytes[i] ^ 0x01, bytes[i].wrapping_add(1)] {
                    let mut b = bytes.clone();
                    b[i] = v;
                    let _ = decode(&b);
                }
            }
            // ...and random multi-byte mutations.
            for _ in 0..500 {
                let mut b = bytes.clone();
                for _ in 0..1 + rng.next() % 8 {
                    let i = (rng.next() as usize) % b.len();
                    b[i] = rng.next() as u8;
                }
                let _ = decode(&b);
            }
        }
    }

    fn ext_tensor(name: &str, dims: &[i64], entries: &[(&str, &str)]) -> TensorProto {
        TensorProto {
            raw_data: None,
            data_location: Some(DataLocation::External as i32),
            external_data: entries
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..f32_tensor(name, dims, &[])
        }
    }

    /// A fresh folder under the target directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let d = std::env::temp_dir()
            .join(format!("kinkcheck-ext-{}", std::process::id()))
            .join(test);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn external_data_is_read_from_the_model_folder() {
        let dir = scratch("read");
        let vals: Vec<u8> = [9.0f32, 1.5, -2.0, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut file = vec![0u8; 4];
        file.extend(&vals);
        std::fs::write(dir.join("m.onnx.data"), &file).unwrap();
        let t = ext_tensor(
            "W",
            &[3],
            &[
                ("location", "m.onnx.data"),
                ("offset", "8"),
                ("length", "12"),
            ],
        );
        let bytes = model_with(vec![t.clone()], vec![]);
        let m = decode_with_base(&bytes, Some(&dir)).unwrap();
        assert_eq!(m.initializers[0].data, [1.5, -2.0, 0.25]);
        // through load(): the folder is the model's
        std::fs::write(dir.join("m.onnx"), &bytes).unwrap();
        assert_eq!(
            load(&dir.join("m.onnx")).unwrap().initializers[0].data,
            [1.5, -2.0, 0.25]
        );
        // without a base folder: an error naming the tensor
        assert!(err_msg(decode(&bytes)).starts_with("tensor 'W' uses external data"));

        let case = |entries: &[(&str, &str)], dims: &[i64]| {
            err_msg(decode_with_base(
                &model_with(vec![ext_tensor("W", dims, entries)], vec![]),
                Some(&dir),
            ))
        };
        let e = case(
            &[
                ("location", "m.onnx.data"),
                ("offset", "8"),
                ("length", "8"),
            ],
            &[3],
        );
        assert_eq!(
            e,
            "tensor 'W': external data has 8 bytes but dims [3] of FLOAT need 12"
        );
        let e = case(
            &[
                ("location", "m.onnx.data"),
                ("offset", "8"),
                ("length", "40"),
            ],
            &[10],
        );
        assert_eq!(
            e,
            "tensor 'W': external data file 'm.onnx.data' has 20 bytes, too short for offset 8 and length 40"
        );
        let e = case(&[("location", "../m.onnx.data")], &[3]);
        assert!(
            e.contains("must be a relative path inside the model's folder"),
            "{e}"
        );
        let abs = dir.join("m.onnx.data");
        let e = case(&[("location", abs.to_str().unwrap())], &[3]);
        assert!(
            e.contains("must be a relative path inside the model's folder"),
            "{e}"
        );
        let e = case(&[("location", "nope.bin")], &[3]);
        assert!(
            e.starts_with("tensor 'W': external data file 'nope.bin' cannot be read"),
            "{e}"
        );
        let e = case(&[("offset", "0")], &[3]);
        assert_eq!(e, "tensor 'W': external data has no 'location'");
        let e = case(&[("location", "m.onnx.data"), ("offset", "-4")], &[3]);
        assert!(
            e.contains("'offset' = '-4' is not a non-negative integer"),
            "{e}"
        );
        // a symbolic link that leaves the folder
        #[cfg(unix)]
        {
            let outside = scratch("outside");
            std::fs::write(outside.join("w.bin"), &file).unwrap();
            let _ = std::fs::remove_file(dir.join("link.bin"));
            std::os::unix::fs::symlink(outside.join("w.bin"), dir.join("link.bin")).unwrap();
            let e = case(&[("location", "link.bin"), ("length", "12")], &[3]);
            assert_eq!(
                e,
                "tensor 'W': external data location 'link.bin' resolves outside the model's folder"
            );
        }
    }
}
