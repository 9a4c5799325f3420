// swift-tools-version:6.0
import PackageDescription
import class Foundation.ProcessInfo

let package = Package(
    name: "moe-tune",
    products: [
        .executable(name: "moe-tune", targets: ["moe-tune"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
    ],
    targets: [
        // OpenBLAS from Debian (libopenblas-dev): cblas_sgemm and the core-type switch.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Sources/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // A C ABI over SentencePiece's C++ API; no C++ exception crosses into Swift.
        .target(
            name: "CSentencePiece",
            path: "Sources/CSentencePiece",
            cxxSettings: [.unsafeFlags(["-std=c++17"])],
            linkerSettings: [.linkedLibrary("sentencepiece"), .linkedLibrary("stdc++")]
        ),
        // Vectorised element-wise kernels (exp, SwiGLU) with per-CPU clones.
        .target(
            name: "CKernels",
            path: "Sources/CKernels",
            cSettings: [.unsafeFlags(["-O3"])]
        ),
        // The Swift modules, each depending only on those above it in this list
        // (docs/architecture.md; scripts/check_layers.sh checks every import in CI).
        // Files: safetensors, GGUF, mapped and atomic files, locks, digests.
        .target(name: "MoEFormats", path: "Sources/MoEFormats"),
        // Text: tokenizers (tokenizer.json, SentencePiece, GGUF vocabularies), Jinja chat templates.
        .target(name: "MoEText", dependencies: ["MoEFormats", "CSentencePiece"], path: "Sources/MoEText"),
        // The model: configs, layers (forward/backward pairs), families, weights, adapters.
        .target(
            name: "MoECore",
            dependencies: ["MoEFormats", "MoEText", "COpenBLAS", "CKernels"],
            path: "Sources/MoECore"
            // No unchecked build (the "-O unchecked" flag): sizes computed from files and configs must be refused or trap, never
            // wrap. Its gain was not measurable: bench-train --experts on a bench-small-shaped model
            // (2-core AVX2 EPYC shared with other builds), 8 alternating runs each, unchecked vs
            // checked: median 202 vs 187 tokens/s, best 355 vs 340, runs spreading about +-40%.
        ),
        // Training and evaluation data: JSONL examples, chat encoding, batches, packing, mixes.
        .target(name: "MoEData", dependencies: ["MoECore"], path: "Sources/MoEData"),
        // Using a model: decoding, sampling, evaluation (loss, exact match, expert tables).
        .target(name: "MoEInference", dependencies: ["MoEData"], path: "Sources/MoEInference"),
        // Training: the config, optimizer, schedule, trainer, checkpoints, metrics, MPI.
        .target(
            name: "MoETraining",
            dependencies: ["MoEInference", .product(name: "Yams", package: "Yams")],
            path: "Sources/MoETraining"
        ),
        // Serving: an OpenAI-compatible HTTP server over the batched decoder.
        .target(
            name: "MoEServe",
            dependencies: [
                "MoEInference", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/MoEServe"
        ),
        // Writing models: merge, quantize, GGUF export.
        .target(name: "MoEExport", dependencies: ["MoECore"], path: "Sources/MoEExport"),
        .executableTarget(
            name: "moe-tune",
            dependencies: [
                "MoETraining", "MoEExport", "MoEServe",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/moe-tune"
        ),
        .testTarget(
            name: "MoETuneTests",
            dependencies: ["MoETraining", "MoEExport", "MoEServe"],
            path: "Tests/MoETuneTests",
            exclude: ["Fixtures"]
        ),
    ],
    swiftLanguageModes: [.v5]
)

// libFuzzer targets (fuzz/): built only by scripts/fuzz.sh, which sets MOE_TUNE_FUZZ=1 and
// builds with -sanitize=fuzzer,address in .build-fuzz. libFuzzer provides main, so this
// executable cannot link in an ordinary build; it is not part of the package otherwise.
if ProcessInfo.processInfo.environment["MOE_TUNE_FUZZ"] == "1" {
    package.products.append(.executable(name: "moe-tune-fuzz", targets: ["moe-tune-fuzz"]))
    package.targets.append(.executableTarget(
        name: "moe-tune-fuzz",
        dependencies: ["MoETraining", "MoEExport"],
        path: "fuzz/Sources/moe-tune-fuzz",
        swiftSettings: [.unsafeFlags(["-parse-as-library"])]
    ))
}
