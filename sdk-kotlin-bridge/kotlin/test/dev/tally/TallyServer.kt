// A real `tally` server for the suite: the binary cargo built, on a free
// loopback port with a temporary data directory, started once per JVM.
package dev.tally

import dev.tally.ffi.Client
import dev.tally.ffi.KeyKind
import dev.tally.ffi.Site
import dev.tally.ffi.TallyException
import java.io.File
import java.net.ServerSocket
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

/** A site on the shared server with its keys. */
data class TestSite(val siteId: String, val ingestKey: String, val queryKey: String)

object TallyServer {
    const val ADMIN_KEY = "kotlin-suite-operator-key-0123456789"

    /** `http://127.0.0.1:<port>` of the running server. */
    val endpoint: String by lazy { start() }

    /** An operator client, for creating sites and keys. */
    val admin: Client by lazy { Client(endpoint, ADMIN_KEY) }

    private var process: Process? = null

    /** A new site (one per test keeps tests apart) with an ingest and a query key. */
    fun site(name: String): TestSite = runBlocking {
        val siteId = "$name-${System.nanoTime()}".lowercase()
        admin.createSite(Site(siteId = siteId, domain = "$siteId.example"))
        TestSite(
            siteId = siteId,
            ingestKey = admin.createApiKey(KeyKind.INGEST, listOf(siteId), "kotlin suite"),
            queryKey = admin.createApiKey(KeyKind.QUERY, listOf(siteId), "kotlin suite"),
        )
    }

    private fun start(): String {
        val binary = File(System.getProperty("tally.bin") ?: error("the tally.bin system property is not set"))
        check(binary.canExecute()) { "$binary is missing: build it with `cargo build -p tally-server`" }
        val port = freePort()
        val dataDir = Files.createTempDirectory("tally-kotlin-suite").toFile()
        val started = ProcessBuilder(
            binary.path, "serve", "--listen", "127.0.0.1:$port", "--data-dir", dataDir.path,
            "--admin-key", ADMIN_KEY,
        ).redirectOutput(ProcessBuilder.Redirect.DISCARD)
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .apply { environment()["RUST_LOG"] = "warn" }
            .start()
        process = started
        Runtime.getRuntime().addShutdownHook(Thread {
            started.destroy()
            started.waitFor(10, TimeUnit.SECONDS)
            dataDir.deleteRecursively()
        })
        val endpoint = "http://127.0.0.1:$port"
        waitReady(endpoint, started)
        return endpoint
    }

    private fun waitReady(endpoint: String, started: Process) = runBlocking {
        Client(endpoint, ADMIN_KEY).use { client ->
            withTimeout(30_000) {
                while (true) {
                    check(started.isAlive) { "tally exited with ${started.exitValue()} before answering" }
                    try {
                        client.listSites()
                        return@withTimeout
                    } catch (e: TallyException.Unavailable) {
                        delay(50)
                    }
                }
            }
        }
    }

    /** A loopback port nothing listens on (now). */
    fun freePort(): Int = ServerSocket(0).use { it.localPort }
}
