"""What TensorRT's ONNX parser and trtexec accept, as data: every rule names its operator, the TensorRT versions it
holds for, what it says, and the source line that states it.

The next TensorRT release is an edit of this file. Versions are ``(major, minor)``; ``until=None`` means "still
true in the newest release we read". A major alone (``10``) means that major's first release (10.0): the lint is
conservative for a device whose minor version is unknown.

Read, not run: onnx-tensorrt ``docs/operators.md`` at 10.0-GA, 10.1-GA and the 10.15 parser (the ``parsers/onnx``
submodule commit of NVIDIA/TensorRT v10.15), onnx-tensorrt's ``onnxOpImporters.cpp``/``importerUtils.cpp`` at
10.1-GA, NVIDIA/TensorRT's CHANGELOG and release notes for 11.0 and 11.5, and trtexec's ``sampleOptions.cpp`` at
v10.0.0, v10.16 and v11.1.
"""

from __future__ import annotations

from dataclasses import dataclass

Version = tuple[int, int]

_OTRT = "https://github.com/onnx/onnx-tensorrt/blob"
OPS_MD_10_0 = f"{_OTRT}/73f629e04a68765647010b98dd94257282d05d11/docs/operators.md"  # release/10.0-GA
OPS_MD_10_1 = f"{_OTRT}/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/docs/operators.md"  # release/10.1-GA
# NVIDIA/TensorRT v10.15 pins parsers/onnx to this onnx-tensorrt commit
OPS_MD_10_15 = f"{_OTRT}/fa5aa9f61e7781d2ca8f5351d42c1f19525a6124/docs/operators.md"
IMPORTERS_10_1 = f"{_OTRT}/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/onnxOpImporters.cpp"
IMPORTER_UTILS_10_1 = f"{_OTRT}/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/importerUtils.cpp"
MODEL_IMPORTER_10_1 = f"{_OTRT}/96e781103cfc4adf4a6bb557e94bac8e693f6f4c/ModelImporter.cpp"
TRT_CHANGELOG_11_0 = "https://github.com/NVIDIA/TensorRT/blob/v11.0/CHANGELOG.md"
TRT_RELEASE_11_5 = "https://github.com/NVIDIA/TensorRT/releases/tag/v11.5"
SAMPLE_OPTIONS = {
    10: "https://github.com/NVIDIA/TensorRT/blob/v10.0.0/samples/common/sampleOptions.cpp",
    "10.16": "https://github.com/NVIDIA/TensorRT/blob/v10.16/samples/common/sampleOptions.cpp",
    11: "https://github.com/NVIDIA/TensorRT/blob/v11.1/samples/common/sampleOptions.cpp",
}
MIGRATION_TRTEXEC = "https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x.html"
MIGRATION_ORT = (
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-c-api-reference.html"
)
JETSON_11_3 = "https://docs.nvidia.com/deeplearning/tensorrt/11.3.0/api/migration/tensorrt-10x-to-11x-jetson.html"

# ONNX Runtime's TensorRT execution provider links against TensorRT; for TensorRT 11 it needs this release or newer
# (removed IBuilder::platformHasFastFp16; "ONNX Runtime 1.27+ supports TensorRT 11.x").
ORT_MIN_FOR_TRT = {11: ((1, 27), MIGRATION_ORT)}


def parse_version(version: int | str | tuple | Version) -> Version:
    """``10`` -> (10, 0); ``"10.15"`` -> (10, 15); ``(11, 1)`` -> (11, 1). A major alone means its first release."""
    if isinstance(version, tuple):
        major, minor = (list(version) + [0])[:2]
        return int(major), int(minor)
    if isinstance(version, (bool, float)):  # 10.1 and 10.10 are different releases: give a string
        raise TypeError(f"TensorRT version {version!r}: give 10, 11 or a string such as '10.15'")
    text = str(version).strip()
    parts = text.split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 and parts[1] != "" else 0
    except ValueError:
        raise ValueError(f"TensorRT version {version!r}: expected MAJOR or MAJOR.MINOR, e.g. 10 or 10.15") from None
    if major not in (10, 11):
        raise ValueError(f"TensorRT version {version!r}: this lint knows TensorRT 10 and 11")
    return major, minor


@dataclass(frozen=True)
class Rule:
    id: str
    op: str  # ONNX op type, or "model" for graph-level rules
    since: Version
    until: Version | None  # last release it holds for (inclusive); None: still holds in the newest we read
    severity: str  # "error": the parser or builder rejects it; "warning": accepted, but changed
    text: str
    source: str

    def applies(self, v: Version) -> bool:
        return self.since <= v and (self.until is None or v <= self.until)


@dataclass(frozen=True)
class OpsetRange:
    since: Version
    until: Version | None
    low: int
    high: int
    source: str


# The documented ONNX opset range. 10.1-10.14 are not documented here: the lint keeps the 10.0 range for them
# (conservative). 11.x: opset 25 arrived in 11.5, so 11.0-11.4 stop at 24, as 10.15 does.
OPSET_RANGES = [
    OpsetRange((10, 0), (10, 14), 9, 20, f"{OPS_MD_10_0}#L5"),
    OpsetRange((10, 15), (10, 99), 9, 24, f"{OPS_MD_10_15}#L5"),
    OpsetRange((11, 0), (11, 4), 9, 24, TRT_RELEASE_11_5),
    OpsetRange((11, 5), None, 9, 25, TRT_RELEASE_11_5),
]

# Operators the parser imports ("Y" in operators.md), with the line of their row in the 10.0-GA table. Not in the
# table yet (the lint calls them unsupported): ops the parser gained after 10.1 that generators do not use, such as
# Attention, RMSNormalization, RotaryEmbedding, TensorScatter, STFT and the window functions (in the 10.15 table).
_OPS_10_0 = """
Abs=17 Acos=18 Acosh=19 Add=20 And=22 ArgMax=23 ArgMin=24 Asin=25 Asinh=26 Atan=27 Atanh=28 AveragePool=29
BatchNormalization=30 Cast=38 CastLike=39 Ceil=40 Celu=42 Clip=44 Concat=46 Constant=48 ConstantOfShape=49
Conv=50 ConvTranspose=52 Cos=53 Cosh=54 CumSum=55 DepthToSpace=57 DequantizeLinear=58 Div=60 Dropout=61
Einsum=63 Elu=64 Equal=65 Erf=66 Exp=67 Expand=68 EyeLike=69 Flatten=70 Floor=71 Gather=72 GatherElements=73
GatherND=74 Gelu=75 Gemm=76 GlobalAveragePool=77 GlobalLpPool=78 GlobalMaxPool=79 Greater=80 GreaterOrEqual=81
GridSample=82 GroupNormalization=83 GRU=84 HardSigmoid=87 HardSwish=88 Hardmax=89 Identity=90 If=91
ImageScaler=92 InstanceNormalization=94 IsInf=95 IsNaN=96 LayerNormalization=97 LeakyRelu=98 Less=99
LessOrEqual=100 Log=101 LogSoftmax=102 Loop=103 LRN=104 LSTM=105 LpNormalization=106 LpPool=107 MatMul=108
Max=110 MaxPool=111 Mean=114 MeanVarianceNormalization=115 Min=117 Mish=118 Mod=119 Mul=120 Neg=122
NonMaxSuppression=124 NonZero=125 Not=126 OneHot=127 Or=131 Pad=132 ParametricSoftplus=133 Pow=134 PRelu=135
QuantizeLinear=138 RandomNormal=139 RandomNormalLike=140 RandomUniform=141 RandomUniformLike=142 Range=143
Reciprocal=144 ReduceL1=145 ReduceL2=146 ReduceLogSum=147 ReduceLogSumExp=148 ReduceMax=149 ReduceMean=150
ReduceMin=151 ReduceProd=152 ReduceSum=153 ReduceSumSquare=154 Relu=156 Reshape=157 Resize=158
ReverseSequence=159 RNN=160 RoiAlign=161 Round=162 ScaledTanh=164 Scan=165 Scatter=166 ScatterElements=167
ScatterND=168 Selu=169 Shape=177 Shrink=178 Sigmoid=179 Sign=180 Sin=181 Sinh=182 Size=183 Slice=184
Softmax=185 Softplus=187 Softsign=188 SpaceToDepth=189 Split=190 Sqrt=192 Squeeze=193 Sub=197 Sum=198 Tan=199
Tanh=200 ThresholdedRelu=202 Tile=203 TopK=204 Transpose=205 Trilu=206 Unsqueeze=208 Upsample=209 Where=210
Xor=211
"""


def _op_rules() -> list[Rule]:
    rules = []
    for item in _OPS_10_0.split():
        op, line = item.split("=")
        rules.append(
            Rule(
                f"op-{op}",
                op,
                (10, 0),
                None,
                "supported",
                f"{op} is imported by the ONNX parser",
                f"{OPS_MD_10_0}#L{line}",
            )
        )
    rules.append(
        Rule(
            "op-DeformConv",
            "DeformConv",
            (10, 1),
            None,
            "supported",
            "DeformConv is imported (1D or 2D spatial input, symmetric pads)",
            f"{OPS_MD_10_1}#L59",
        )
    )
    rules.append(
        Rule(
            "op-Swish",
            "Swish",
            (11, 0),
            None,
            "supported",
            "Swish is imported (added in 11.0)",
            f"{TRT_CHANGELOG_11_0}#L17",
        )
    )
    return rules


OP_SUPPORT: list[Rule] = _op_rules()

# ONNX tensor element types (onnx.TensorProto values) by name, so this table needs no onnx import.
QUANTIZED_TYPES = {"INT8": 3, "FLOAT8E4M3FN": 17, "INT4": 22, "FLOAT4E2M1": 23}

RULES: list[Rule] = [
    Rule(
        "dq-input-type",
        "DequantizeLinear",
        (10, 0),
        None,
        "error",
        "DequantizeLinear's input must be INT8, FP8 or INT4 (FP4 from 10.15); an INT32 input (a bias quantised by "
        "ONNX Runtime's QuantizeBias) or UINT8 is rejected",
        f"{OPS_MD_10_0}#L58",
    ),
    Rule(
        "qdq-quantized-type",
        "QuantizeLinear",
        (10, 0),
        None,
        "error",
        "TensorRT only allows FP8, INT8 and INT4 quantization",
        f"{IMPORTERS_10_1}#L1593-L1596",
    ),
    Rule(
        "qdq-uint8",
        "QuantizeLinear",
        (10, 0),
        None,
        "error",
        "UINT8 Q/DQ is rejected (UINT8 is only a network input/output type); quantise with signed symmetric INT8",
        f"{IMPORTERS_10_1}#L1349-L1355",
    ),
    Rule(
        "qdq-zero-point",
        "QuantizeLinear",
        (10, 0),
        None,
        "error",
        "Q/DQ zero points must be 0 (symmetric quantisation)",
        f"{OPS_MD_10_0}#L138",
    ),
    Rule(
        "resize-ctm",
        "Resize",
        (10, 0),
        None,
        "error",
        "Resize coordinate_transformation_mode must be half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
        "asymmetric or align_corners (half_pixel_symmetric and tf_crop_and_resize are rejected)",
        f"{IMPORTERS_10_1}#L4475-L4478",
    ),
    Rule(
        "resize-mode",
        "Resize",
        (10, 0),
        None,
        "error",
        "Resize mode must be nearest, linear or cubic (cubic on the outer 2 dims only)",
        f"{IMPORTERS_10_1}#L4404",
    ),
    Rule(
        "resize-aspect",
        "Resize",
        (10, 0),
        None,
        "error",
        "Resize keep_aspect_ratio_policy must be stretch",
        f"{OPS_MD_10_0}#L158",
    ),
    Rule(
        "resize-antialias",
        "Resize",
        (10, 0),
        None,
        "error",
        "Resize antialiasing is not supported",
        f"{OPS_MD_10_0}#L158",
    ),
    Rule(
        "pad-axes",
        "Pad",
        (10, 0),
        (10, 14),
        "error",
        "Pad's axes input must be an initializer (a build-time constant); the 10.15 table no longer says so",
        f"{OPS_MD_10_0}#L132",
    ),
    Rule(
        "pad-mode",
        "Pad",
        (10, 0),
        None,
        "error",
        "Pad mode must be constant, reflect, edge or wrap",
        f"{IMPORTERS_10_1}#L4035-L4046",
    ),
    Rule(
        "double",
        "model",
        (10, 0),
        None,
        "warning",
        "DOUBLE has limited support: TensorRT casts it down to FLOAT, clamping to +-FLT_MAX",
        f"{OPS_MD_10_0}#L9",
    ),
    Rule(
        "cast-double",
        "Cast",
        (10, 0),
        None,
        "warning",
        "Cast to DOUBLE becomes a cast to FLOAT",
        f"{IMPORTER_UTILS_10_1}#L318",
    ),
    Rule(
        "custom-domain",
        "model",
        (10, 0),
        None,
        "error",
        "an op outside the ONNX domain (or unknown to the parser) is imported only as a plugin, which must be "
        "registered",
        f"{MODEL_IMPORTER_10_1}#L166",
    ),
    Rule(
        "opset-range",
        "model",
        (10, 0),
        None,
        "error",
        "the model's ONNX opset must be inside the range this TensorRT release documents (see OPSET_RANGES)",
        f"{OPS_MD_10_0}#L5",
    ),
]


def rule(rule_id: str) -> Rule:
    return next(r for r in RULES if r.id == rule_id)


def supported_ops(version: int | str | tuple) -> set[str]:
    v = parse_version(version)
    return {r.op for r in OP_SUPPORT if r.applies(v)}


def opset_range(version: int | str | tuple) -> OpsetRange:
    v = parse_version(version)
    return next(r for r in OPSET_RANGES if r.since <= v and (r.until is None or v <= r.until))


# ------------------------------------------------------------------------------------------------ trtexec options
@dataclass(frozen=True)
class TrtexecOption:
    flag: str
    accepted: dict  # major -> "yes" | "no-op" (parsed, warns, does nothing) | "no" (not an option)
    text: str
    sources: dict  # major -> URL of the line that parses it


def _src(major, line):
    return f"{SAMPLE_OPTIONS[major]}#L{line}"


# Read in sampleOptions.cpp: v10.0.0 (and the same flags at v10.16) and v11.1. Line numbers are those files'.
TRTEXEC_OPTIONS: dict[str, TrtexecOption] = {
    o.flag: o
    for o in [
        TrtexecOption("--onnx", {10: "yes", 11: "yes"}, "ONNX model to build", {10: _src(10, 965), 11: _src(11, 1012)}),
        TrtexecOption(
            "--saveEngine",
            {10: "yes", 11: "yes"},
            "write the serialized engine",
            {10: _src(10, 1322), 11: _src(11, 1279)},
        ),
        TrtexecOption(
            "--minShapes",
            {10: "yes", 11: "yes"},
            "optimisation profile minimum",
            {10: _src(10, 693), 11: _src(11, 669)},
        ),
        TrtexecOption(
            "--optShapes",
            {10: "yes", 11: "yes"},
            "optimisation profile optimum",
            {10: _src(10, 703), 11: _src(11, 679)},
        ),
        TrtexecOption(
            "--maxShapes",
            {10: "yes", 11: "yes"},
            "optimisation profile maximum",
            {10: _src(10, 698), 11: _src(11, 674)},
        ),
        TrtexecOption("--shapes", {10: "yes", 11: "yes"}, "inference shapes", {10: _src(10, 1576), 11: _src(11, 1810)}),
        TrtexecOption(
            "--timingCacheFile",
            {10: "yes", 11: "yes"},
            "reuse the timing cache",
            {10: _src(10, 1403), 11: _src(11, 1353)},
        ),
        TrtexecOption(
            "--exportTimes",
            {10: "yes", 11: "yes"},
            "per-inference timings as JSON",
            {10: _src(10, 1629), 11: _src(11, 1867)},
        ),
        TrtexecOption(
            "--exportOutput", {10: "yes", 11: "yes"}, "outputs as JSON", {10: _src(10, 1630), 11: _src(11, 1868)}
        ),
        TrtexecOption(
            "--exportProfile",
            {10: "yes", 11: "yes"},
            "per-layer profile as JSON",
            {10: _src(10, 1631), 11: _src(11, 1869)},
        ),
        TrtexecOption(
            "--warmUp", {10: "yes", 11: "yes"}, "warm-up time in ms", {10: _src(10, 1553), 11: _src(11, 1676)}
        ),
        TrtexecOption(
            "--duration", {10: "yes", 11: "yes"}, "timed run length in s", {10: _src(10, 1552), 11: _src(11, 1675)}
        ),
        TrtexecOption(
            "--noTF32",
            {10: "yes", 11: "yes"},
            "disable TF32 (on by default in both)",
            {10: _src(10, 1196), 11: _src(11, 1213)},
        ),
        TrtexecOption(
            "--fp16",
            {10: "yes", 11: "no"},
            "enable FP16 kernels (weak typing; removed in 11)",
            {10: _src(10, 1197), 11: MIGRATION_TRTEXEC},
        ),
        TrtexecOption(
            "--int8",
            {10: "yes", 11: "no"},
            "enable INT8 kernels (weak typing; in 11 only for --safe builds)",
            {10: _src(10, 1199), 11: MIGRATION_TRTEXEC},
        ),
        TrtexecOption(
            "--stronglyTyped",
            {10: "yes", 11: "no-op"},
            "strongly typed network (the only mode in 11)",
            {10: _src(10, 1201), 11: _src(11, 1214)},
        ),
        TrtexecOption(
            "--noDataTransfers",
            {10: "yes", 11: "no-op"},
            "time without host<->device copies (10: copies are timed by default; 11: never timed by default)",
            {10: _src(10, 1561), 11: _src(11, 1690)},
        ),
        TrtexecOption(
            "--includeDataTransfers",
            {10: "no", 11: "yes"},
            "time host<->device copies (11 only)",
            {10: SAMPLE_OPTIONS[10], 11: _src(11, 1696)},
        ),
        TrtexecOption(
            "--useCudaGraph",
            {10: "yes", 11: "no-op"},
            "CUDA graph launch (the default in 11)",
            {10: _src(10, 1565), 11: _src(11, 1710)},
        ),
        TrtexecOption(
            "--separateProfileRun",
            {10: "yes", 11: "no-op"},
            "profile in a separate run (always in 11)",
            {10: _src(10, 1566), 11: _src(11, 1722)},
        ),
    ]
}


# Every option name each trtexec parses: the string literals its sampleOptions.cpp hands to the option parsers, at
# v10.0.0, v10.16 and v11.1 (11.1's "--int8" is left out: only the --safe builder options parse it, L2065).
# Parsed is not the same as honoured: TRTEXEC_OPTIONS says which are no-ops.
def _words(text: str) -> frozenset:
    return frozenset(text.split())


TRTEXEC_PARSED: dict[str, frozenset] = {
    "10.0": _words("""
    allocationStrategy allowGPUFallback allowWeightStreaming avgRuns avgTiming best bf16 buildDLAStandalone
    builderOptimizationLevel calib calibProfile consistency device directIO dumpLayerInfo
    dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile dumpRefit duration dynamicPlugins
    errorOnTimingCacheMiss excludeLeanRuntime exportLayerInfo exportOutput exportProfile exportTimes
    exposeDMA fp16 fp8 getPlanVersionOnly hardwareCompatibilityLevel help idleTime ignoreParsedPluginLibs
    infStreams inputIOFormats int8 iterations layerDeviceTypes layerOutputTypes layerPrecisions leanDLLPath
    loadEngine loadInputs markDebug maxAuxStreams maxShapes maxShapesCalib memPoolSize minShapes
    minShapesCalib noBuilderCache noCompilationCache noDataTransfers noTF32 onnx optShapes optShapesCalib
    outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm plugins precisionConstraints
    preview profile profilingVerbosity refit restricted safe saveDebugTensors saveEngine separateProfileRun
    serialized setPluginsToSerialize shapes skipInference sleepTime sparsity staticPlugins std streams
    stripWeights stronglyTyped tacticSources tempdir tempfileControls threads timeDeserialize timeRefit
    timingCacheFile useCudaGraph useDLACore useManagedMemory useProfile useRuntime useSpinWait vc verbose
    versionCompatible warmUp weightStreamingBudget weightless
"""),
    "10.16": _words("""
    adjustForDLA allocationStrategy allowGPUFallback allowWeightStreaming asyncFileReader avgRuns avgTiming
    best bf16 buildDLAStandalone builderOptimizationLevel calib calibProfile consistency cpuOnly
    decomposableAttentions device directIO distributiveIndependence dumpKernelText dumpLayerInfo
    dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile dumpRefit duration dynamicPlugins
    enablePluginOverride errorOnTimingCacheMiss excludeLeanRuntime exportLayerInfo exportOutput
    exportProfile exportTimes exposeDMA fp16 fp8 getPlanVersionOnly hardwareCompatibilityLevel help idleTime
    ignoreParsedPluginLibs infStreams inputIOFormats int4 int8 iterations l2LimitForTiling layerDeviceTypes
    layerOutputTypes layerPrecisions leanDLLPath loadEngine loadInputs markDebug
    markUnfusedTensorsAsDebugTensors maxAuxStreams maxShapes maxShapesCalib maxTactics memPoolSize minShapes
    minShapesCalib monitorMemory noBuilderCache noCompilationCache noDataTransfers noTF32 onnx optShapes
    optShapesCalib outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm plugins
    precisionConstraints preview profile profilingVerbosity refit refitFromOnnx remoteAutoTuningConfig
    reportCapabilityDLA restricted runtimePlatform safe safetyPlugins saveAllDebugTensors saveDebugTensors
    saveEngine separateProfileRun serialized setPluginsToSerialize shapes skipInference sleepTime sparsity
    staticPlugins std streams stripAllWeights stripWeights stronglyTyped tacticSources tempdir
    tempfileControls threads tilingOptimizationLevel timeDeserialize timeRefit timingCacheFile
    uint8AsymmetricQuantizationDLA useCudaGraph useDLACore useManagedMemory useProfile useRuntime
    useSpinWait vc verbose versionCompatible warmUp weightStreamingBudget weightless
"""),
    "11.1": _words("""
    accuracyAlgorithm accuracyThreshold adjustForDLA allocationStrategy allowGPUFallback
    allowWeightStreaming asyncFileReader atol avgRuns avgTiming buildDLAStandalone builderOptimizationLevel
    consistency continue cpuOnly decomposableAttentions device directIO distributiveIndependence dryRun
    dumpKernelText dumpLayerInfo dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile
    dumpRefit duration dynamicPlugins enablePluginOverride errorOnTimingCacheMiss excludeLeanRuntime
    exportLayerInfo exportOutput exportProfile exportTimes exposeDMA getPlanVersionOnly
    hardwareCompatibilityLevel help helpBuildRoute idleTime ignoreParsedPluginLibs includeDataTransfers
    infStreams inputIOFormats iterations l2LimitForTiling layerDeviceTypes leanDLLPath loadEngine loadInputs
    loadRefOutputs markDebug markUnfusedTensorsAsDebugTensors maxAuxStreams maxShapes maxTactics memPoolSize
    minShapes monitorMemory noBuilderCache noCompilationCache noCudaGraph noDataTransfers noSpinWait noTF32
    onnx optShapes outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm plugins preview
    profile profilingVerbosity refPair refit refitFromOnnx remoteAutoTuningConfig reportCapabilityDLA rtol
    runtimePlatform safe safetyPlugins saveAllDebugTensors saveAllEngines saveDebugTensors saveEngine
    separateProfileRun serialized setBuildRoute setPluginsToSerialize shapes skipInference sleepTime
    sparsity staticPlugins std streams stripAllWeights stripWeights stronglyTyped tacticSources tempdir
    tempfileControls threads tilingOptimizationLevel timeDeserialize timeRefit timingCacheFile
    tuneBuildRouteFile tuneBuildRoutes tuningCacheFile tuningResultFile tuningSearch tuningTimeOut
    uint8AsymmetricQuantizationDLA useCudaGraph useDLACore useManagedMemory useProfile useRuntime
    useSpinWait vc verbose versionCompatible warmUp weightStreamingBudget
"""),
}


def trtexec_accepts(flag: str, major: int) -> str:
    """ "yes", "no-op" or "no" for ``--flag[=value]`` in trtexec ``major``; unknown flags raise KeyError."""
    return TRTEXEC_OPTIONS[flag.split("=", 1)[0]].accepted[major]


# ------------------------------------------------------------------------------------------------ ONNX Runtime
_TRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs")


def installed_tensorrt_version() -> Version | None:
    """(major, minor) of the pip-installed TensorRT, read from package metadata (TensorRT is not imported);
    None where TensorRT comes from the system (JetPack's apt packages) or is absent."""
    from importlib import metadata

    for dist in _TRT_DISTS:
        try:
            parts = metadata.version(dist).split(".")
        except metadata.PackageNotFoundError:
            continue
        try:
            return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            continue
    return None


def ort_tensorrt_problem(ort_version: str, trt: Version | None = None) -> str:
    """Why ONNX Runtime ``ort_version``'s TensorRT execution provider cannot use TensorRT ``trt`` ("" if it can)."""
    trt = trt if trt is not None else installed_tensorrt_version()
    if trt is None or trt[0] not in ORT_MIN_FOR_TRT:
        return ""
    need, source = ORT_MIN_FOR_TRT[trt[0]]
    try:
        have = tuple(int(p) for p in ort_version.split("+")[0].split(".")[:2])
    except ValueError:
        return ""
    if have >= need:
        return ""
    return (
        f"ONNX Runtime {ort_version} cannot drive TensorRT {trt[0]}.{trt[1]}: its TensorRT execution provider "
        f"needs ONNX Runtime >= {need[0]}.{need[1]} ({source}); pip install -U onnxruntime-gpu"
    )
