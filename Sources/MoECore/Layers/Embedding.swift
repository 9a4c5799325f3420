import MoEFormats
import MoEText
/// Token embedding lookup.
/// out [N, C] = table[ids[n], :] for each of the N tokens; table is [V, C].
/// Ids were validated against V when the batch was built.
public func embeddingForward(out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, count n: Int,
                             table: Matrix) {
    let c = table.cols
    for i in 0..<n {
        (out + i * c).update(from: table.pointer + Int(ids[i]) * c, count: c)
    }
}
