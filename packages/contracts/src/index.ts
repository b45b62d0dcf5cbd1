export * from './vm.ts';
