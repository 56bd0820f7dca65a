from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_RAW: _ClassVar[Codec]
    CODEC_INT8: _ClassVar[Codec]
    CODEC_INT4: _ClassVar[Codec]
    CODEC_FP8: _ClassVar[Codec]
    CODEC_FP16: _ClassVar[Codec]
    CODEC_BF16: _ClassVar[Codec]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_LZ4: _ClassVar[Compression]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_INT8: DType
DTYPE_UINT8: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_BOOL: DType
CODEC_RAW: Codec
CODEC_INT8: Codec
CODEC_INT4: Codec
CODEC_FP8: Codec
CODEC_FP16: Codec
CODEC_BF16: Codec
COMPRESSION_NONE: Compression
COMPRESSION_LZ4: Compression

class CodecParams(_message.Message):
    __slots__ = ("scales", "scale_bytes", "scale_dtype", "zero_points", "zero_point_bytes", "group_size", "axis", "original_dtype", "encoded_nbytes", "outlier_channels", "hadamard_block")
    SCALES_FIELD_NUMBER: _ClassVar[int]
    SCALE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCALE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODED_NBYTES_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HADAMARD_BLOCK_FIELD_NUMBER: _ClassVar[int]
    scales: _containers.RepeatedScalarFieldContainer[float]
    scale_bytes: bytes
    scale_dtype: DType
    zero_points: _containers.RepeatedScalarFieldContainer[int]
    zero_point_bytes: bytes
    group_size: int
    axis: int
    original_dtype: DType
    encoded_nbytes: int
    outlier_channels: _containers.RepeatedScalarFieldContainer[int]
    hadamard_block: int
    def __init__(self, scales: _Optional[_Iterable[float]] = ..., scale_bytes: _Optional[bytes] = ..., scale_dtype: _Optional[_Union[DType, str]] = ..., zero_points: _Optional[_Iterable[int]] = ..., zero_point_bytes: _Optional[bytes] = ..., group_size: _Optional[int] = ..., axis: _Optional[int] = ..., original_dtype: _Optional[_Union[DType, str]] = ..., encoded_nbytes: _Optional[int] = ..., outlier_channels: _Optional[_Iterable[int]] = ..., hadamard_block: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "codec", "compression", "payload", "codec_params", "raw_nbytes")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_FIELD_NUMBER: _ClassVar[int]
    RAW_NBYTES_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    codec: Codec
    compression: Compression
    payload: bytes
    codec_params: CodecParams
    raw_nbytes: int
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., codec: _Optional[_Union[Codec, str]] = ..., compression: _Optional[_Union[Compression, str]] = ..., payload: _Optional[bytes] = ..., codec_params: _Optional[_Union[CodecParams, _Mapping]] = ..., raw_nbytes: _Optional[int] = ...) -> None: ...
