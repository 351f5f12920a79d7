// Reading events back from the server, as the product's users would: RunReport.
package dev.tally

import dev.tally.ffi.Client
import dev.tally.ffi.Dimension
import dev.tally.ffi.Metric
import dev.tally.ffi.MetricValue
import dev.tally.ffi.ReportFilter
import dev.tally.ffi.ReportQuery
import java.io.File
import java.nio.file.Files

/** Events of [site] today whose `run` property is [run], per event name. */
suspend fun eventsByName(site: TestSite, run: String): Map<String, Long> {
    val report = Client(TallyServer.endpoint, site.queryKey).use { client ->
        client.runReport(
            ReportQuery(
                siteId = site.siteId,
                metrics = listOf(Metric.EVENTS),
                dimensions = listOf(Dimension.EventName),
                startDate = "today",
                endDate = "today",
                filters = listOf(ReportFilter(Dimension.Property("run"), run)),
            ),
        )
    }
    return report.rows.associate { row -> row.dimensions[0] to row.values[0].count() }
}

/** The value of a count metric. */
fun MetricValue.count(): Long = when (this) {
    is MetricValue.Count -> value
    is MetricValue.Number -> error("expected a count, got $value")
}

/** A fresh queue directory, deleted when the JVM exits. */
fun queueDir(): String = Files.createTempDirectory("tally-queue").toFile().apply(File::deleteOnExit).path
