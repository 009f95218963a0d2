{#- dom0: undo sys-monitor.sls.  The qube and its data stay (its files are
    the only copy of today's metrics); remove it by hand with qvm-remove. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

/etc/qubes/policy.d/30-sysmon.policy:
  file.absent

sysmon-qube-service-off:
  qvm.features:
    - name: {{ sysmon.monitor }}
    - default:
      - service.sysmon
