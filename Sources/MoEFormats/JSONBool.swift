import Foundation

/// On Linux Foundation, JSON booleans arrive as NSNumber too; tell them apart.
@inline(__always)
package func CFGetTypeIDIsBool(_ n: NSNumber) -> Bool {
    // swift-corelibs-foundation bridges JSON true/false to NSNumber with objCType "c".
    String(cString: n.objCType) == "c" && (n == true as NSNumber || n == false as NSNumber)
}
