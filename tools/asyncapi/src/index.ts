export { generate, newAjv, GenerationError, ASYNCAPI_PATH, SCHEMAS_DIR, REGENERATE, type Generated } from './generate.ts';
export { jsonSchemaOf, walkSchema, JSON_SCHEMA_DRAFT, type JsonSchema } from './schemas.ts';
export { channels, operations, parameters, allMessages, eventMessages, extraSchemas, type ChannelInfo, type MessageInfo, type OperationInfo } from './catalog.ts';
export * as examples from './examples.ts';
export { REPO, writeGenerated, staleFiles } from './files.ts';
