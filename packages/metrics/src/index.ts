export { METRICS, metricNames, type MetricDefinition, type MetricKey, type MetricOwner, type CounterKey, type GaugeKey, type HistogramKey, type LabelsOf } from './definitions.ts';
export { DEFAULT_METRICS_PORTS, metricsEnv, type MetricsService, type MetricsSettings } from './env.ts';
export { serveMetrics, type MetricsServer, type MetricsLog } from './server.ts';
export { ServiceMetrics, type BusHooks } from './service.ts';
export { JobMetrics, type ImageTraits } from './jobs.ts';
export { parseMetrics, sampleValue, type Sample } from './parse.ts';
